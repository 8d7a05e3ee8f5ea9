"""Check the example project's JSON report: every example test is listed, every check passed.

The one deliberately broken budget (the strict xfail) must be listed as failed.

    python .ci/check_example_report.py example_project/compress-report.json
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

EXPECTED_FAILURE = "test_compression.py::test_too_much_compression_fails"


def example_tests(folder: Path) -> set[str]:
    """Node ids of the test functions in the example's test files."""
    tests = set()
    for path in folder.glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tests |= {
            f"{path.name}::{node.name}"
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        }
    return tests


def main(report_path: str) -> int:
    report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    checks = report["checks"]
    listed = {check["test"] for check in checks}
    problems = [
        f"not in the report: {test}"
        for test in sorted(example_tests(Path(report_path).parent) - listed)
    ]
    for check in checks:
        should_pass = check["test"] != EXPECTED_FAILURE
        if check["passed"] != should_pass:
            verdict = "passed" if check["passed"] else "failed"
            problems.append(f"{check['check']} {verdict}: {check['violations']}")
    for problem in problems:
        print(f"example report: {problem}", file=sys.stderr)
    print(f"example report: {len(checks)} checks of {len(listed)} tests, {len(problems)} problems")
    return 1 if problems or not checks else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
