"""`verify --junit-xml`: a verify report as JUnit XML, the test report format that GitHub Actions, GitLab,
Jenkins and Buildkite show. One test case per task and check (checksums, trunk, labels, token ids, merge,
outputs, agreement, metric change); a failing case carries the figure and the limit in its message."""

import time
from pathlib import Path
from xml.etree import ElementTree as ET

from toolchain.fsutil import write_bytes_atomic

# verify's check names -> the case name a CI page shows (a task's check is "<check> <task>")
CASE = {"bundle": "checksums", "trunk": "trunk fingerprint", "labels": "labels", "tokenizer": "token ids",
        "merge": "merged equals single-task"}


def _parity_case(part: str) -> str:
    text = part.removeprefix("FAIL: ")
    return "outputs" if text.startswith("max abs") else "agreement" if text.startswith("agreement") else "metric change"


def cases(report: dict) -> list:
    """(classname, name, failure message or None, detail) per case, in the report's order."""
    bundle, tasks, out = Path(report["bundle"]).name, report.get("tasks", {}), []
    for c in report["checks"]:
        kind, _, task = c["check"].partition(" ")
        where = f"verify.{bundle}.{task}" if task in tasks else f"verify.{bundle}"
        if kind == "parity":  # one case per figure: outputs or agreement, and the metric change
            for part in c["detail"].split("; "):
                out.append((where, _parity_case(part), part if part.startswith("FAIL") else None, part))
            continue
        name = CASE.get(kind, kind) if task in tasks or not task else c["check"]
        out.append((where, name, None if c["ok"] else c["detail"], c["detail"]))
    return out


def write(report: dict, path) -> Path:
    """Write the report's cases to `path` (one testsuite, inside testsuites); returns the path."""
    rows = cases(report)
    failures = sum(1 for r in rows if r[2] is not None)
    root = ET.Element("testsuites", name="ctb-mobile verify", tests=str(len(rows)), failures=str(failures),
                      errors="0", time="0")
    suite = ET.SubElement(root, "testsuite", name=f"verify {Path(report['bundle']).name}", tests=str(len(rows)),
                          failures=str(failures), errors="0", skipped="0", time="0",
                          timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
    for classname, name, failure, detail in rows:
        case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
        if failure is not None:
            ET.SubElement(case, "failure", message=failure, type="ParityFailure").text = failure
        else:
            ET.SubElement(case, "system-out").text = detail
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    write_bytes_atomic(Path(path), data + b"\n")
    return Path(path)
