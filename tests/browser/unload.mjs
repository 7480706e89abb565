// Drives Debian's Chromium (playwright-core) for tests/test_browser_unload.py.
//
//   node unload.mjs '<json config>'   → prints one JSON report on stdout
//
// config: {collector, pageOrigin, writeKey, serverKey, adminToken, methods: [...], navigations, path, runId}
// For each method, one browser context opens unload.html (on pageOrigin, another origin than the
// collector) `navigations` times in a row, each page navigating straight to the next; the last
// page navigates to about:blank. Every page sends one event, on pagehide. Then it waits until the
// collector has stored them all (or 10 s pass) and reports how many arrived. A probe page
// measures the keepalive budget: what sendBeacon and fetch(keepalive) do past 64 KB.
// The test makes the assertions; this script only observes.
import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2]);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const admin = { Authorization: `Bearer ${config.adminToken}` };

async function storedFor(anonymousId) {
  const url = `${config.collector}/v1/events?limit=1000&anonymousId=${encodeURIComponent(anonymousId)}`;
  const answer = await fetch(url, { headers: admin });
  return (await answer.json()).data;
}

async function runMethod(browser, method) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const log = { method, consoleErrors: [], queued: [] };
  page.on("console", (message) => {
    if (message.type() === "error") log.consoleErrors.push(message.text());
  });
  const run = `${config.runId}-${method}`;
  const began = Date.now();
  for (let n = 1; n <= config.navigations; n++) {
    const query = new URLSearchParams({ method, n: String(n), run, collector: config.collector, path: config.path, writeKey: config.writeKey });
    await page.goto(`${config.pageOrigin}/unload.html?${query}`);  // leaves the previous page: its pagehide sends
    await page.waitForFunction(() => window.__ready === true);
  }
  await page.goto("about:blank");  // the last page's pagehide
  const deadline = Date.now() + 10000;
  let stored = [];
  while (Date.now() < deadline) {
    stored = await storedFor(run);
    if (stored.length >= config.navigations) break;
    await sleep(100);
  }
  log.anonymousId = run;
  log.sent = config.navigations;
  log.stored = stored.length;
  log.storedPages = stored.map((item) => item.event.properties.page).sort((a, b) => a - b);
  log.seconds = (Date.now() - began) / 1000;
  const probe = await context.newPage();
  await probe.goto(`${config.pageOrigin}/unload.html?method=none`);
  for (let n = 1; n <= config.navigations; n++) log.queued.push(await probe.evaluate((key) => localStorage.getItem(key), `queued-${n}`));
  // Playwright does not report a request of a page being left: the same call from a live page
  // shows what goes on the wire (to /m, which stores nothing).
  const [request] = await Promise.all([
    probe.waitForRequest((r) => r.url().endsWith("/m") && r.method() === "POST"),
    probe.evaluate(([m, url]) => window.send(m, url, JSON.stringify({ series: [] })), [method, `${config.collector}/e7/m`]),
  ]);
  log.contentType = (await request.allHeaders())["content-type"] ?? null;
  await context.close();
  return log;
}

async function keepaliveBudget(browser) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${config.pageOrigin}/unload.html?method=none`);
  const result = await page.evaluate(async ([collector, serverKey, serverRun]) => {
    const url = `${collector}/v1/m`; // counted, never stored, always 200
    const body = (kb) => JSON.stringify({ series: [], pad: "x".repeat(kb * 1024) });
    const pause = () => new Promise((resolve) => setTimeout(resolve, 500));
    const outcome = (promise) =>
      promise.then(async (answer) => `sent ${answer.status} ${await answer.text()}`, (error) => `rejected: ${error}`);
    const out = {};
    out.beacon70k = navigator.sendBeacon(url, body(70));
    await pause();
    out.beacon60k = navigator.sendBeacon(url, body(60));
    await pause();
    out.keepalive70k = await outcome(fetch(url, { method: "POST", body: body(70), keepalive: true }));
    out.keepalive60k = await outcome(fetch(url, { method: "POST", body: body(60), keepalive: true }));
    await pause();
    out.keepalive30k = await outcome(fetch(url, { method: "POST", body: body(30), keepalive: true }));
    await pause();
    // Two at once: the budget is for everything in flight with keepalive from the page.
    const two = [0, 1].map(() => outcome(fetch(url, { method: "POST", body: body(40), keepalive: true })));
    out.keepaliveTwo40kAtOnce = await Promise.all(two);
    // A beacon carries an Origin too: a server key in its body is refused like any web page's.
    const event = { type: "track", event: "Leaked Key", anonymousId: serverRun, messageId: serverRun, writeKey: serverKey };
    out.serverKeyBeaconQueued = navigator.sendBeacon(`${collector}/e7/t`, JSON.stringify(event));
    await pause();
    return out;
  }, [config.collector, config.serverKey, `${config.runId}-server-key`]);
  await context.close();
  return result;
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const report = { methods: {}, budget: null };
try {
  for (const method of config.methods) report.methods[method] = await runMethod(browser, method);
  report.budget = await keepaliveBudget(browser);
} catch (error) {
  report.error = String(error && error.stack ? error.stack : error);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report));
