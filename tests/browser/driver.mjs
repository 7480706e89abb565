// Drives Debian's Chromium (playwright-core, never a downloaded browser) for tests/test_browser.py.
//
//   node driver.mjs '<json config>'   → prints one JSON report on stdout
//
// config: {collector, pageOrigin, writeKey, adminToken, artifacts, scenarios: [...], debugger: bool}
// Each scenario loads tests/browser/page.html (on pageOrigin, a different origin than the collector)
// in a fresh browser context, records every request to the collector, every console error and
// failed request, waits until the collector has stored the page's 5 calls, then lingers so that
// retries (which come ~0.3 s after a failure) would be seen, and takes a screenshot.
// The test makes the assertions; this script only observes.
import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2]);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const admin = { Authorization: `Bearer ${config.adminToken}` };

async function storedFor(anonymousId) {
  const url = `${config.collector}/v1/events?limit=100&anonymousId=${encodeURIComponent(anonymousId)}`;
  const answer = await fetch(url, { headers: admin });
  return (await answer.json()).data;
}

function observe(page) {
  const log = { consoleErrors: [], pageErrors: [], failedRequests: [], collectorRequests: [] };
  page.on("console", (message) => {
    if (message.type() === "error") log.consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => log.pageErrors.push(String(error)));
  page.on("requestfailed", (request) =>
    log.failedRequests.push(`${request.method()} ${request.url()} ${request.failure()?.errorText}`),
  );
  page.on("response", async (response) => {
    const request = response.request();
    if (!request.url().startsWith(config.collector)) return;
    const headers = await request.allHeaders();
    log.collectorRequests.push({
      method: request.method(),
      path: new URL(request.url()).pathname,
      status: response.status(),
      retryCount: headers["x-retry-count"] ?? null,
      contentType: headers["content-type"] ?? null,
      hasAuthorization: "authorization" in headers,
    });
  });
  return log;
}

async function runScenario(browser, mode) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const log = observe(page);
  const query = new URLSearchParams({ mode, collector: config.collector, writeKey: config.writeKey });
  await page.goto(`${config.pageOrigin}/?${query}`);
  const handle = await page.waitForFunction(() => window.__result, null, { timeout: 20000 });
  const result = await handle.jsonValue();
  log.result = result;
  if (result.anonymousId) {
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline && (await storedFor(result.anonymousId)).length < 5) await sleep(100);
    await sleep(1200); // a retry would arrive within this window
  }
  await page.screenshot({ path: `${config.artifacts}/browser-${mode}.png`, fullPage: true });
  await context.close();
  return log;
}

async function runDebugger(browser) {
  const send = (path, body, key) =>
    fetch(`${config.collector}${path}`, {
      method: "POST",
      headers: { Authorization: "Basic " + Buffer.from(`${key}:`).toString("base64"), "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }).then((answer) => answer.status);
  // Before the page opens: a stored event, a re-send of it (a duplicate) and a rejected message, from
  // the other workspace's source (the web source's own outcomes are asserted duplicate-free).
  const historyId = `hist-${Date.now()}`;
  const earlier = { event: "History Probe", userId: "hist-user", messageId: historyId, properties: { n: 0 } };
  const historySent = [
    await send("/v1/track", earlier, config.otherKey),
    await send("/v1/track", earlier, config.otherKey),
    await send("/v1/track", { userId: "hist-user", messageId: `${historyId}-bad`, properties: { n: -1 } }, config.otherKey),
  ];

  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const log = observe(page);
  log.historyId = historyId;
  log.historySent = historySent;
  await page.goto(`${config.collector}/debugger?token=${encodeURIComponent(config.adminToken)}`);
  await page.waitForSelector("#status.live", { timeout: 10000 });
  // Rows the page showed from the history (newest first), by status.
  log.historyStatuses = await page.$$eval(
    "#list > li.earlier",
    (rows, id) => rows.filter((r) => String(r.entry.messageId || "").startsWith(id)).map((r) => r.dataset.status),
    historyId,
  );
  log.earlierRows = await page.locator("#list > li.earlier").count();
  log.curl = {};
  for (const status of ["stored", "rejected"]) {
    const row = page.locator(`#list > li.earlier[data-status="${status}"]`).filter({ hasText: "hist-user" }).first();
    await row.locator("button.curl").click();
    log.curl[status] = await row.locator("pre.curl").innerText();
  }

  const began = Date.now();
  log.validStatus = await send("/v1/track", { event: "Debugger Probe", userId: "dbg-user", properties: { n: 1 } }, config.writeKey);
  await page.waitForSelector('li.event:has-text("Debugger Probe")', { timeout: 1000 });
  log.validShownAfterMs = Date.now() - began;

  const invalidBegan = Date.now();
  log.invalidStatus = await send("/v1/track", { userId: "dbg-user", properties: { n: 2 } }, config.writeKey);
  await page.waitForSelector('li.invalid:has-text("dbg-user")', { timeout: 1000 });
  log.invalidShownAfterMs = Date.now() - invalidBegan;
  log.invalidText = await page.locator("#list > li.invalid").first().innerText();

  await send("/v1/identify", { userId: "someone-else", traits: { plan: "pro" } }, config.writeKey);
  await page.waitForSelector('li.event:has-text("someone-else")', { timeout: 1000 });
  await page.fill("#f-user", "dbg-user");
  log.visibleWithUserFilter = await page.locator("#list > li:visible").count();
  await page.fill("#f-user", "");
  await page.selectOption("#f-type", "identify");
  log.visibleWithTypeFilter = await page.locator("#list > li:visible").count();
  log.identifyRows = await page.$$eval("#list > li", (rows) => rows.filter((r) => r.entry.message?.type === "identify").length);
  await page.selectOption("#f-type", "");
  await page.selectOption("#f-status", "rejected");
  log.visibleStatusesWhenRejected = await page.$$eval("#list > li", (rows) => rows.filter((r) => !r.hidden).map((r) => r.dataset.status));
  await page.selectOption("#f-status", "");
  log.visibleUnfiltered = await page.locator("#list > li:visible").count();
  log.rows = await page.locator("#list > li").count();
  await page.screenshot({ path: `${config.artifacts}/debugger.png`, fullPage: true });
  await context.close();
  return log;
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const report = { scenarios: {}, debugger: null };
try {
  for (const mode of config.scenarios) report.scenarios[mode] = await runScenario(browser, mode);
  if (config.debugger) report.debugger = await runDebugger(browser);
} catch (error) {
  report.error = String(error && error.stack ? error.stack : error);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report));
