"""The deployment as tools nobody here wrote see it: checkov on infra/main.bicep and azure-functions-doctor on the app.

Every finding is fixed or explained by one line of infra/README.md ("Checked by outside tools"); nothing is skipped.
The tools live in .venv/tools (requirements-tools.txt; `make bootstrap` installs them).
"""
from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".venv" / "tools" / "bin"
README = (ROOT / "infra" / "README.md").read_text()


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.exists(), f"{path} is missing: run `make bootstrap` (it installs requirements-tools.txt there)"
    return str(path)


@pytest.mark.slow
def test_checkov_finds_nothing_unexplained_in_the_template():
    done = subprocess.run([tool("checkov"), "-f", "infra/main.bicep", "-o", "json", "--quiet", "--compact"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    assert summary["parsing_errors"] == 0 and summary["skipped"] == 0, summary
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    explained = set(re.findall(r"^- `(CKV2?_[A-Z0-9_]+)`", README, re.MULTILINE))
    assert not failed - explained, f"failed checks not explained in infra/README.md: {sorted(failed - explained)}"
    assert not explained - failed, f"explained in infra/README.md but passing now: {sorted(explained - failed)}"
    code = [line.split("//")[0] for line in (ROOT / "infra" / "main.bicep").read_text().splitlines()]
    assert not [line for line in code if "newGuid(" in line], "a key drawn on every deployment"


def test_azure_functions_doctor_finds_nothing_unexplained(tmp_path):
    # On the project as a clone holds it (the tracked files): the tool walks every file below it, and the working
    # tree's .venv (with the tools' own venv) and node_modules made it read about 45,000 files, 50 s, for the same
    # findings it reports on the clone in 10 s.
    project = tmp_path / "project"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    out = tmp_path / "doctor.json"
    done = subprocess.run([tool("azure-functions-doctor"), "doctor", "--profile", "full", "--format", "json",
                           "--output", str(out)], cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    items = [item for section in json.loads(out.read_text())["results"] for item in section["items"]]
    failures = [i["rule_id"] for i in items if i["status"] == "fail"]
    assert not failures, failures
    explained = set(re.findall(r"^- doctor `([a-z0-9_]+)`", README, re.MULTILINE))
    warned = {i["rule_id"] for i in items if i["status"] == "warn"}
    # Only warnings the README explains (some depend on the machine: Core Tools installed, a local.settings.json).
    assert not warned - explained, f"doctor warnings not explained in infra/README.md: {sorted(warned - explained)}"
    for fixed in ("check_funcignore", "check_unused_files", "check_host_json_log_level_conflict"):
        assert fixed not in warned and fixed not in explained


def _ignored(path: str, patterns: list[str]) -> bool:
    """gitignore semantics as far as .funcignore uses them: `dir/` anywhere, or a name/glob."""
    parts = path.split("/")
    for pattern in patterns:
        if pattern.endswith("/"):
            if pattern.rstrip("/") in parts[:-1] or (path + "/").startswith(pattern):
                return True
        elif fnmatch.fnmatch(parts[-1], pattern) or fnmatch.fnmatch(path, pattern):
            return True
    return False


def test_the_package_carries_the_app_and_none_of_the_local_tooling():
    patterns = [line.strip() for line in (ROOT / ".funcignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for local in ("tests/", "local/", "benchmarks/", "node_modules/", ".venv/", ".local/"):
        assert local in patterns, local
        assert _ignored(local + "x.py", patterns)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    published = [p for p in tracked if not _ignored(p, patterns)]
    needed = {"function_app.py", "host.json", "requirements.txt", "openapi.json"}
    assert needed <= set(published)
    assert any(p.startswith("sync/functions/") for p in published) and any(p.startswith("notifications/") for p in published)
    assert all(p in needed or p.startswith(("sync/", "notifications/")) for p in published), sorted(
        p for p in published if p not in needed and not p.startswith(("sync/", "notifications/")))
