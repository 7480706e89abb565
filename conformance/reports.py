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


def write_all(results: dict[str, Any], directory: Path) -> list[Path]:
    validate_results(results)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "results.json", directory / "junit.xml", directory / "report.html"]
    written[0].write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    written[1].write_bytes(junit(results))
    written[2].write_text(render_html(results), encoding="utf-8")
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
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


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
    complete = "complete" if results["complete"] else f"INCOMPLETE ({_e(results['abortReason'] or '')})"
    return (
        "<!doctype html><html lang='en'><meta charset='utf-8'>"
        f"<title>Conformance report: {_e(results['target'])}</title><style>{STYLE}</style><body>"
        f"<h1>Conformance report</h1><p>Target <code>{_e(results['target'])}</code>, run "
        f"<code>{_e(results['runId'])}</code>, kit {_e(results['kit']['version'])} (spec "
        f"{_e(results['kit']['specVersion'])}), profiles {_e(', '.join(results['profiles']))}, features "
        f"{_e(', '.join(results['features']) or 'none')}. {results['startedAt']} → {results['finishedAt']}, "
        f"{complete}.</p><h2>Level: {_e(results['level'])}</h2><p>{counts}</p>"
        f"<details><summary>legend</summary><ul>{legend}</ul><p>Levels: Core = every core MUST passes; "
        "Core+Inspect adds the inspect profile; Strict = Core+Inspect with no NON_STRICT. Tentative and skipped "
        f"cases are not counted.</p></details><h2>Cases</h2>{body}</body></html>"
    )
