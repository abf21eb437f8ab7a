"""The measurement scripts run end to end (tiny sizes on CPU; their real use is on a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_seed_reproduction_script_writes_a_page_with_every_table(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "scripts/gpu_evidence.py"),
        "--device",
        "cpu",
        "--batch",
        "2",
        "--new-tokens",
        "8",
        "--batches",
        "1,2",
        "--rounds",
        "2",
        "--warmup",
        "0",
        "--skip-compile",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    (page,) = tmp_path.glob("*.md")
    text = page.read_text()
    for heading in ("## (a)", "## (b)", "## (d)", "Command: `python scripts/gpu_evidence.py --device cpu"):
        assert heading in text
    assert "| naive (no cache) |" in text and "| static + pipelined |" in text
    (data,) = tmp_path.glob("*.json")
    records = json.loads(data.read_text())["results"]
    assert {r["stream"] for r in records} == {"baseline", "pipelined", "nostop"}
    assert all(r["parity"] in ("pass", "n/a") for r in records)


def test_the_harness_overhead_script_reports_a_ratio() -> None:
    cmd = [
        sys.executable,
        str(ROOT / "scripts/harness_overhead.py"),
        "--pairs",
        "1",
        "--rounds",
        "2",
        "--new-tokens",
        "8",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "plugin/bare ratio median" in proc.stdout


def test_the_ab_validity_script_drives_real_ab_sessions_and_prints_its_table() -> None:
    """The live benchmark once, tiny (one slowed session, 3 process pairs): it runs, no rate asserted."""
    cmd = [sys.executable, str(ROOT / "scripts/ab_validity.py"), "--models", "tiny-gpt2", "--aa-sessions", "0"]
    cmd += ["--sessions", "1", "--slowdowns", "1.0", "--new-tokens", "4", "--python", sys.executable]
    cmd += ["--pytest-args", "--decodeperf-ab-processes=3 --decodeperf-ab-max-pairs=12"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| tiny-gpt2 |")]
    assert [row.split(" | ")[1] for row in rows[-1:]] == ["+100% per step"]
    assert [row.split(" | ")[2] for row in rows[-1:]] == ["2"]  # two variants: two decisions per session
    assert "| model | B | decisions | ms/token WORSE |" in proc.stdout


def test_the_bisect_validity_script_bisects_a_project_and_prints_its_table() -> None:
    """The live bisection benchmark once, tiny (one commit after the first, slowed: one A/B): no rate asserted."""
    cmd = [sys.executable, str(ROOT / "scripts/bisect_validity.py"), "--commits", "1", "--runs", "1", "--aa-runs", "0"]
    cmd += ["--slowdowns", "1.0", "--new-tokens", "4", "--python", sys.executable]
    cmd += ["--pytest-args", "--decodeperf-ab-processes=3 --decodeperf-ab-max-pairs=12"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| tiny-gpt2 |")]
    assert [row.split(" | ")[1:3] for row in rows[-1:]] == [["+100% per step, 1 of 1", "1"]]
    assert "| model | slowed commit | runs | right | undecided | wrong |" in proc.stdout


def test_the_history_validity_script_drives_separate_recorded_runs_and_prints_its_table() -> None:
    """The live history benchmark once, tiny (one comparison per condition): it runs, no rate asserted."""
    cmd = [sys.executable, str(ROOT / "scripts/history_validity.py"), "--aa-runs", "1", "--runs", "1"]
    cmd += ["--slowdowns", "", "--new-tokens", "4", "--python", sys.executable]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| tiny-gpt2 |")]
    assert [row.split(" | ")[1] for row in rows[-3:]] == [
        "A/A, separate runs",
        "A/A, one run of each pair on a busy machine",
        "x2.8, the reference run on a busy machine",
    ]
    assert "| model | condition | compared runs | sessions failed |" in proc.stdout
