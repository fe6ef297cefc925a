"""The benchmark runs end to end at a tiny size and ends with its JSON contract."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"users", "groups", "memberships", "graph_requests", "graph_floor", "table_writes", "table_write_floor",
        "full_sync_s", "floor_s", "resync_s", "resync_user_writes", "resync_membership_writes", "peak_rss_mb",
        "import_function_app_s", "import_azure_functions_s", "dry_run_s", "dry_run_peak_rss_mb", "dry_run_user_writes",
        "dry_run_table_writes", "dry_resync_s", "dry_resync_user_writes", "azure_floor_s", "throttled_table_requests",
        "throttled_graph_requests", "synced_users"}


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_benchmark_prints_the_contract_at_a_tiny_size():
    done = subprocess.run([sys.executable, "benchmarks/full_sync.py", "--users", "300", "--groups", "3",
                           "--import-runs", "1", "--timeout", "40"],
                          cwd=ROOT, capture_output=True, text=True, timeout=58)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert set(result) == KEYS
    assert result["users"] == 300 and result["groups"] == 3
    assert result["graph_requests"] >= result["graph_floor"] > 0
    assert result["table_writes"] >= result["table_write_floor"] > 0
    assert result["resync_user_writes"] == 0
    assert result["resync_membership_writes"] == 0
    assert result["dry_run_user_writes"] == 0 and result["dry_resync_user_writes"] == 0 and result["dry_run_s"] > 0
    assert "PASS" in done.stdout or "MISS" in done.stdout
    # Without --azure-limits nothing is metered: no floor of Azure's, no throttling counted.
    assert (result["azure_floor_s"], result["throttled_table_requests"], result["throttled_graph_requests"]) == (
        None, None, None)
    assert result["synced_users"] == 300
