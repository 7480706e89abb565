"""The report stage: a results document → results.json (canonical, schema-checked),
junit.xml (one testsuite per case file) and one self-contained report.html."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import jsonschema

from conformance.casefile import load_json

COLOURS = {
    "PASS": "#1a7f37",
    "NON_STRICT": "#9a6700",
    "INFORMATIONAL": "#0969da",
    "FAIL": "#cf222e",
    "ERROR": "#8250df",
    "SKIPPED": "#6e7781",
    "XFAIL": "#bc4c00",
    "XPASS": "#cf222e",
}
LEGEND = {
    "PASS": "every applicable check passed",
    "NON_STRICT": "every MUST passed, a SHOULD did not (conformant, not Strict)",
    "INFORMATIONAL": "only MAY/observed values, recorded",
    "FAIL": "a MUST check failed",
    "ERROR": "the kit could not judge (connection, timeout, read-back)",
    "SKIPPED": "profile or feature not declared; reason given",
    "XFAIL": "known-failing case failed (listed with --known-failing)",
    "XPASS": "known-failing case passed: update the list (fails the run)",
}


def validate_results(results: dict[str, Any]) -> None:
    """Raises jsonschema.ValidationError when the document breaks results.schema.json."""
    jsonschema.validate(results, load_json("results.schema.json"), cls=jsonschema.Draft202012Validator)


# The areas a vendor reads the summary by (suite → area), and what each area's MUSTs ask, in one sentence.
AREAS = {
    "paths": ("paths", "responses"),
    "auth": ("auth",),
    "encodings": ("content",),
    "limits": ("limits",),
    "validation": ("track", "identify", "page", "screen", "group", "alias", "batch", "quarantine"),
    "real clients": ("captures",),
    "enrichment": ("enrichment",),
    "dedupe and storage": ("storage",),
    "profile API": ("profiles",),
}
ADVICE = {
    "paths": "Every Segment path, long and short (/v1/t, /v1/b, …), must answer a valid message with exactly "
    '200 {"success": true}.',
    "auth": "Basic (with or without the colon) and body writeKey must be accepted, and a missing or unknown key "
    "must be answered 401, or 200 with nothing stored.",
    "encodings": "Bodies are JSON whatever the Content-Type, gzip and chunked bodies must be read, and a body that is "
    "not JSON must be answered 400.",
    "limits": "Events up to 32 KB and batches up to 500 KB (after gunzip) must be stored; larger ones refused with 400 "
    "or 413 and not stored.",
    "validation": "Valid messages must be stored and answered 200; an invalid one must be answered 400, or 200 with "
    "nothing stored, and never take its valid batch neighbours with it.",
    "real clients": "Bodies exactly as analytics.js, analytics-node and analytics-python send them must be stored "
    'and answered 200 {"success": true}.',
    "enrichment": "receivedAt, messageId and a skew-corrected timestamp must be set by the server, and the client "
    "values it keeps must be kept.",
    "dedupe and storage": "A 2xx must be readable, and a re-sent messageId must be stored once.",
    "profile API": "The profile API must answer as the collector spec says (statuses, bodies, merges, workspace "
    "isolation).",
}


def area_of(case: dict[str, Any]) -> str:
    for area, suites in AREAS.items():
        if case["suite"] in suites:
            return area
    return str(case["suite"])


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Counts per verdict by area, the MUST failures by area, and what was (not) inspected."""
    by_area: dict[str, dict[str, int]] = {}
    failures: dict[str, list[str]] = defaultdict(list)
    for case in results["cases"]:
        area = area_of(case)
        counts = by_area.setdefault(area, {})
        counts[case["verdict"]] = counts.get(case["verdict"], 0) + 1
        if case["verdict"] == "FAIL":  # a MUST broken (errors and XPASSes are listed with the cases)
            failures[area].append(case["id"])
    stored = [c for case in results["cases"] for c in case["checks"] if c["kind"] == "stored"]
    judged = [c for c in stored if c["outcome"] != "skipped"]
    if "read_back" not in results["features"]:
        inspected = (
            f"Nothing was inspected: no read-back was declared, so {len(stored)} stored checks were skipped and "
            "every inspect case too. These verdicts judge answers only: a server that stores nothing gets the same."
        )
    elif not judged:
        inspected = "Nothing was inspected: read-back was declared, but no selected case checked what was stored."
    else:
        inspected = f"{len(judged)} stored checks were judged through the read-back."
    order = [area for area in AREAS if area in by_area] + [area for area in by_area if area not in AREAS]
    return {
        "areas": [{"area": area, "counts": dict(sorted(by_area[area].items()))} for area in order],
        "fixFirst": [
            {"area": area, "sentence": ADVICE.get(area, f"The {area} cases must pass."), "cases": failures[area]}
            for area in order
            if failures.get(area)
        ],
        "inspected": inspected,
    }


def summary_markdown(results: dict[str, Any]) -> str:
    """The page a vendor reads first (also for $GITHUB_STEP_SUMMARY)."""
    summary = summarize(results)
    verdicts = [v for v in LEGEND if any(v in a["counts"] for a in summary["areas"])]
    lines = [
        f"# Conformance: {results['level']}",
        "",
        f"Target `{results['target']}`, profiles claimed: {', '.join(results['profiles'])}; "
        f"features: {', '.join(results['features']) or 'none'}."
        + ("" if results["complete"] else f" **Incomplete run** ({results['abortReason']})."),
        "",
        f"**{summary['inspected']}**" if summary["inspected"].startswith("Nothing") else summary["inspected"],
        "",
        "| area | " + " | ".join(verdicts) + " |",
        "| --- |" + " ---: |" * len(verdicts),
    ]
    for row in summary["areas"]:
        lines.append(f"| {row['area']} | " + " | ".join(str(row["counts"].get(v, 0)) for v in verdicts) + " |")
    lines += ["", "## What to fix first", ""]
    if not summary["fixFirst"]:
        lines.append("Nothing: no case failed.")
    for item in summary["fixFirst"]:
        shown = ", ".join(f"`{c}`" for c in item["cases"][:8]) + (" …" if len(item["cases"]) > 8 else "")
        lines.append(f"- **{item['area']}** ({len(item['cases'])}): {item['sentence']} {shown}")
    return "\n".join(lines) + "\n"


def write_all(results: dict[str, Any], directory: Path, attachments: dict[str, bytes] | None = None) -> list[Path]:
    """results.json, junit.xml, report.html, summary.md, and the exact request bodies the curl lines replay
    (`bodies/`, relative to the report directory)."""
    validate_results(results)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / name for name in ("results.json", "junit.xml", "report.html", "summary.md")]
    written[0].write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    written[1].write_bytes(junit(results))
    written[2].write_text(render_html(results), encoding="utf-8")
    written[3].write_text(summary_markdown(results), encoding="utf-8")
    for name, body in (attachments or {}).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return written


def junit(results: dict[str, Any]) -> bytes:
    by_file: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case in results["cases"]:
        by_file[case["file"]].append(case)
    root = ET.Element("testsuites", name=f"conformance {results['runId']}")
    for file_name, cases in sorted(by_file.items()):
        suite = ET.SubElement(
            root,
            "testsuite",
            name=file_name.removesuffix(".yaml"),
            tests=str(len(cases)),
            failures=str(sum(c["verdict"] in ("FAIL", "XPASS") for c in cases)),
            errors=str(sum(c["verdict"] == "ERROR" for c in cases)),
            skipped=str(sum(c["verdict"] in ("SKIPPED", "XFAIL") for c in cases)),
        )
        for case in cases:
            element = ET.SubElement(
                suite, "testcase", name=case["id"], classname=file_name, time=f"{case['durationMs'] / 1000:.3f}"
            )
            verdict, reason = case["verdict"], case["reason"]
            if verdict in ("FAIL", "XPASS"):
                failure = ET.SubElement(element, "failure", message=f"{verdict}: {reason}"[:1000])
                failure.text = "\n".join(case["curl"])
            elif verdict == "ERROR":
                ET.SubElement(element, "error", message=reason[:1000])
            elif verdict in ("SKIPPED", "XFAIL"):
                ET.SubElement(element, "skipped", message=f"{verdict}: {reason}"[:1000])
            elif verdict == "NON_STRICT":
                ET.SubElement(element, "system-out").text = f"NON_STRICT (a SHOULD failed): {reason}"
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _e(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else json.dumps(value, default=str))


def _case_html(case: dict[str, Any]) -> str:
    verdict = case["verdict"]
    quotes = "".join(
        f"<blockquote><code>{_e(ref['ref'])}</code><br>{_e(ref['quote'])}</blockquote>" for ref in case["spec"]
    )
    rows = "".join(
        f"<tr class='{c['outcome']}'><td>{c['step']}</td><td>{c['level']}</td><td>{_e(c['kind'])}</td>"
        f"<td><code>{_e(c['expected'])}</code></td><td><code>{_e(c['actual'])}</code></td>"
        f"<td>{c['outcome']}</td><td>{_e(c['note'])}</td></tr>"
        for c in case["checks"]
    )
    transcript = ""
    for number, exchange in enumerate(case["transcript"]):
        request, response = exchange["request"], exchange["response"]
        head = "\n".join(f"{k}: {v}" for k, v in request["headers"].items())
        response_head = "\n".join(f"{k}: {v}" for k, v in response["headers"].items())
        transcript += (
            f"<h4>step {number}</h4><pre>{_e(request['method'])} {_e(request['url'])}\n{_e(head)}\n\n"
            f"{_e(request['body'])}</pre><pre>HTTP {_e(str(response['status']))}\n{_e(response_head)}\n\n"
            f"{_e(response['body'])}</pre>"
        )
    curl = "".join(f"<pre class='curl'>{_e(line)}</pre>" for line in case["curl"])
    if any("--data-binary @bodies/" in line for line in case["curl"]):
        curl = (
            "<p>Run from the report directory: the body is the exact bytes sent, saved in <code>bodies/</code>.</p>"
            + curl
        )
    reason = f"<p class='reason'>{_e(case['reason'])}</p>" if case["reason"] else ""
    opened = " open" if verdict in ("FAIL", "ERROR", "XPASS") else ""
    return (
        f"<details id='{_e(case['id'])}' class='case'{opened}><summary>"
        f"<span class='v' style='background:{COLOURS[verdict]}'>{verdict}</span> <code>{_e(case['id'])}</code> "
        f"{_e(case['title'])} <small>[{case['profile']}, {case['status']}]</small></summary>{reason}{quotes}"
        f"<table><tr><th>step</th><th>level</th><th>check</th><th>expected</th><th>actual</th><th>outcome</th>"
        f"<th>note</th></tr>{rows}</table>"
        + (f"<h4>reproduce</h4>{curl}" if curl else "")
        + f"<details><summary>transcript</summary>{transcript}</details></details>"
    )


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;max-width:1200px}
code,pre{font:12px ui-monospace,monospace}pre{background:#f6f8fa;padding:.6em;overflow:auto;white-space:pre-wrap}
.v{color:#fff;border-radius:3px;padding:0 .4em;font-weight:600;font-size:12px}
.case{border-bottom:1px solid #ddd;padding:.3em 0}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.2em .4em;vertical-align:top;text-align:left}
tr.fail td{background:#ffebe9}tr.skipped td{color:#6e7781}blockquote{border-left:3px solid #0969da;margin:.4em 0;
padding-left:.6em;color:#333}.reason{color:#cf222e}.curl{background:#fff8c5}
.warn{background:#fff8c5;border:1px solid #9a6700;padding:.5em;font-weight:600}
"""


def render_html(results: dict[str, Any]) -> str:
    order = {"XPASS": 0, "FAIL": 1, "ERROR": 2, "NON_STRICT": 3, "XFAIL": 4}
    cases = sorted(results["cases"], key=lambda c: (order.get(c["verdict"], 9), c["id"]))
    counts = " ".join(
        f"<span class='v' style='background:{COLOURS[v]}'>{v} {n}</span>" for v, n in results["counts"].items()
    )
    legend = "".join(
        f"<li><span class='v' style='background:{COLOURS[v]}'>{v}</span> {_e(text)}</li>" for v, text in LEGEND.items()
    )
    body = "".join(_case_html(case) for case in cases)
    summary = summarize(results)
    verdicts = [v for v in LEGEND if any(v in a["counts"] for a in summary["areas"])]
    area_rows = "".join(
        f"<tr><td>{_e(row['area'])}</td>" + "".join(f"<td>{row['counts'].get(v, 0)}</td>" for v in verdicts) + "</tr>"
        for row in summary["areas"]
    )
    fix = (
        "".join(
            f"<li><b>{_e(item['area'])}</b> ({len(item['cases'])}): {_e(item['sentence'])} "
            + ", ".join(f"<a href='#{_e(c)}'><code>{_e(c)}</code></a>" for c in item["cases"])
            + "</li>"
            for item in summary["fixFirst"]
        )
        or "<li>Nothing: no case failed.</li>"
    )
    inspected_class = "warn" if summary["inspected"].startswith("Nothing") else ""
    overview = (
        f"<p class='{inspected_class}'>{_e(summary['inspected'])}</p><h2>Summary by area</h2><table><tr><th>area</th>"
        + "".join(f"<th>{v}</th>" for v in verdicts)
        + f"</tr>{area_rows}</table><h2>What to fix first</h2><ul>{fix}</ul>"
    )
    complete = "complete" if results["complete"] else f"INCOMPLETE ({_e(results['abortReason'] or '')})"
    return (
        "<!doctype html><html lang='en'><meta charset='utf-8'>"
        f"<title>Conformance report: {_e(results['target'])}</title><style>{STYLE}</style><body>"
        f"<h1>Conformance report</h1><p>Target <code>{_e(results['target'])}</code>, run "
        f"<code>{_e(results['runId'])}</code>, kit {_e(results['kit']['version'])} (spec "
        f"{_e(results['kit']['specVersion'])}), profiles {_e(', '.join(results['profiles']))}, features "
        f"{_e(', '.join(results['features']) or 'none')}. {results['startedAt']} → {results['finishedAt']}, "
        f"{complete}.</p><h2>Level: {_e(results['level'])}</h2><p>{counts}</p>{overview}"
        f"<details><summary>legend</summary><ul>{legend}</ul><p>Levels name what was claimed and met: "
        "Segment-compatible = every segment case passes; Collector spec = segment and collector cases pass; "
        "+ Inspect adds the inspect cases of those profiles, with read-back; Strict = + Inspect with no NON_STRICT. "
        f"Tentative and skipped cases are not counted.</p></details><h2>Cases</h2>{body}</body></html>"
    )
