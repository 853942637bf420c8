"""bench/whole_stack.py keeps working: two participants for a few seconds in each of its modes
(through stc, straight into Asterisk with SDES-SRTP, and plain) against the lab's Asterisk.

A benchmark is not a test of speed: this only checks that every mode still sets up its calls, that
the listener hears the talker through Asterisk's mix under the right keys, and that the CPU
figures are read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.asterisk

BENCH = Path(__file__).resolve().parents[1] / "bench" / "whole_stack.py"
SECONDS = 3


def test_whole_stack_bench_runs_every_mode(lab_lock: None, tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    # The bench boots the lab with its own endpoints and puts it back as it found it; this
    # session holds the lab's lock, so it must not take it again.
    result = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "2", "--repeats", "1", "--seconds", str(SECONDS), "--settle", "0.5",
         "--talkers", "1", "--lab-held", "--json", str(out)],
        capture_output=True, text=True, timeout=180, check=False, cwd=BENCH.parents[1],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = json.loads(out.read_text())
    assert sorted(run["mode"] for run in runs) == ["plain", "sdes", "stc"]
    for run in runs:
        # 50 packets a second reach the listener; generous for a busy machine.
        assert run["received"] >= SECONDS * 50 * 0.8, run
        assert run["bad"] == 0, run  # every SRTP packet authenticated under the call's keys
        assert run["voiced"] >= SECONDS * 50 * 0.5, run  # the talker's tone, mixed by Asterisk
        assert run["asterisk_cpu"] > 0, run
    stc = next(run for run in runs if run["mode"] == "stc")
    assert stc["server_cpu"] > 0 and stc["server_rss_kb"] > 0, stc
