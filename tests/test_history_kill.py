"""A writer killed with SIGKILL in the middle of writing history loses nothing already stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_asv_history import make_record

from pytest_decodeperf.history.storage import write_history

WRITER = r"""
import sys, itertools
sys.path.insert(0, {tests!r})
from test_asv_history import make_record
from pytest_decodeperf.history.storage import write_history
results = sys.argv[1]
for i in itertools.count(100):
    recs = [make_record(cache=c, stream=s, seed=i) for c in ("dynamic", "static") for s in ("baseline", "pipelined")]
    commit = f"{{i:08x}}" + "0" * 32  # asv names files by the first 8 characters
    write_history(recs, {{"device": "cpu"}}, results, commit, name="killed", date_ms=1_700_000_000_000 + i)
    print(i, flush=True)
"""


def stored_commits(results: Path) -> set[str]:
    """Every results file parses whole; their commit hashes."""
    commits = set()
    for path in (results / "killed").glob("*.json"):
        data = json.loads(path.read_text())  # a half-written file would raise here
        if path.name != "machine.json":
            commits.add(data["commit_hash"])
    json.loads((results / "benchmarks.json").read_text())
    return commits


@pytest.mark.parametrize("kill_after_s", [0.3, 0.7, 1.3])
def test_sigkill_while_writing_history_loses_nothing_and_leaves_no_half_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_after_s: float
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the writers' lock file
    results = tmp_path / "results"
    first = [make_record(cache="dynamic", stream="baseline", seed=1)]
    write_history(first, {"device": "cpu"}, results, "a" * 40, name="killed", date_ms=1_700_000_000_000)
    script = WRITER.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(results)], stdout=subprocess.PIPE, text=True, env=env)
    written: list[str] = []
    deadline = time.monotonic() + 60
    while len(written) < 2 and time.monotonic() < deadline:  # let it finish a few writes, then kill it mid-stream
        line = proc.stdout.readline() if proc.stdout else ""
        if line:
            written.append(line.strip())
        elif proc.poll() is not None:
            break
    time.sleep(kill_after_s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(written) >= 2, "the writer never got going"
    commits = stored_commits(results)
    assert "a" * 40 in commits  # what was stored before the run
    for done in written:  # every write the writer reported finished
        assert f"{int(done):08x}" + "0" * 32 in commits
    # A later run writes on top of whatever the killed one left.
    write_history(first, {"device": "cpu"}, results, "b" * 40, name="killed", date_ms=1_800_000_000_000)
    assert {"a" * 40, "b" * 40} <= stored_commits(results)
    assert not list(results.rglob("*.tmp")), "a killed writer's temp file outlived the next write"
