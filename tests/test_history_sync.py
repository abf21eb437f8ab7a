"""History on a shared results branch: two machines pushing at once lose nothing (a local bare repository)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from git_helpers import git

from pytest_decodeperf.cli import main
from pytest_decodeperf.errors import DecodePerfError
from pytest_decodeperf.history import sync


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    path = tmp_path / "remote.git"
    path.mkdir()
    git(path, "init", "-q", "--bare")
    return path


def write_run(results: Path, machine: str, commit: str, key: str) -> None:
    (results / machine).mkdir(exist_ok=True)
    (results / machine / f"{commit}-env.json").write_text(json.dumps({"commit_hash": commit, "machine": machine}))
    shared = results / "benchmarks.json"
    definitions = json.loads(shared.read_text()) if shared.exists() else {"version": 2}
    definitions[key] = {"name": key, "version": "1"}
    shared.write_text(json.dumps(definitions, indent=4, sort_keys=True))


def branch_files(remote: Path, tmp_path: Path) -> tuple[list[str], dict[str, object]]:
    check = tmp_path / "check"
    sync.pull(str(remote), "asv-results", check)
    files = sorted(str(p.relative_to(check)) for p in check.rglob("*.json") if ".git" not in p.parts)
    return files, json.loads((check / "benchmarks.json").read_text())


def test_two_machines_pushing_at_once_lose_no_result(remote: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert "starts an empty history" in sync.pull(str(remote), "asv-results", first)
    write_run(first, "gpu-a", "aaaa1111", "track_first")
    assert sync.push(first, "asv-results", "first night") == "results pushed to asv-results"

    machines = {name: tmp_path / name for name in ("gpu-a", "gpu-b")}
    for name, path in machines.items():
        assert "restored" in sync.pull(str(remote), "asv-results", path)
        write_run(path, name, "bbbb2222", f"track_{name}")  # both edit benchmarks.json: a conflict there
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def night(name: str) -> None:
        barrier.wait()
        outcomes[name] = sync.push(machines[name], "asv-results", f"night of {name}", pause_s=0.05)

    threads = [threading.Thread(target=night, args=(name,)) for name in machines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes) == ["gpu-a", "gpu-b"] and all("pushed" in text for text in outcomes.values())
    files, definitions = branch_files(remote, tmp_path)
    assert files == [
        "benchmarks.json",
        "gpu-a/aaaa1111-env.json",
        "gpu-a/bbbb2222-env.json",
        "gpu-b/bbbb2222-env.json",
    ]
    assert set(definitions) == {"version", "track_first", "track_gpu-a", "track_gpu-b"}


def test_a_refused_push_rebases_and_merges_benchmark_definitions(remote: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    sync.pull(str(remote), "asv-results", a)
    write_run(a, "m1", "c0", "track_base")
    sync.push(a, "asv-results", "base")
    sync.pull(str(remote), "asv-results", b)
    write_run(a, "m1", "c1", "track_a")
    sync.push(a, "asv-results", "a")
    write_run(b, "m2", "c1", "track_b")  # b is behind: its first push is refused
    pauses: list[float] = []
    assert sync.push(b, "asv-results", "b", sleep=pauses.append) == "results pushed to asv-results (attempt 2)"
    assert pauses == [2.0]
    _, definitions = branch_files(remote, tmp_path)
    assert set(definitions) == {"version", "track_base", "track_a", "track_b"}


def test_two_runners_with_one_machine_name_stop_in_one_line_and_push_nothing(remote: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    sync.pull(str(remote), "asv-results", a)
    sync.pull(str(remote), "asv-results", b)
    write_run(a, "same", "c1", "track_x")
    sync.push(a, "asv-results", "a")
    (b / "same").mkdir()
    (b / "same" / "c1-env.json").write_text('{"other": true}')
    with pytest.raises(
        DecodePerfError, match=r"conflicts outside benchmarks.json \(same/c1-env.json\): do two runners"
    ):
        sync.push(b, "asv-results", "b", sleep=lambda s: None)
    files, _ = branch_files(remote, tmp_path)
    assert files == ["benchmarks.json", "same/c1-env.json"]
    assert json.loads((tmp_path / "check" / "same" / "c1-env.json").read_text())["machine"] == "same"


def test_the_last_measured_commit_is_read_back_from_the_branch(
    remote: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = tmp_path / "a"
    sync.pull(str(remote), "asv-results", a)
    assert sync.last_commit(a) is None
    write_run(a, "m1", "c1", "track_x")
    sync.push(a, "asv-results", "night 1", commit="1" * 40)
    write_run(a, "m1", "c2", "track_x")
    sync.push(a, "asv-results", "night 2", commit="2" * 40)
    b = tmp_path / "b"
    sync.pull(str(remote), "asv-results", b)
    assert main(["history-last", "--results-dir", str(b)]) == 0
    assert capsys.readouterr().out == "2" * 40 + "\n"


def test_nothing_new_pushes_nothing(remote: Path, tmp_path: Path) -> None:
    a = tmp_path / "a"
    sync.pull(str(remote), "asv-results", a)
    assert sync.push(a, "asv-results", "empty") == "no new results to push"


def test_bad_directories_are_one_line_from_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert main(["history-pull", "--remote", str(tmp_path), "--into", str(full)]) == 1
    assert main(["history-push", "--results-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"decodeperf: {full} is not empty: history-pull clones into a new or empty directory",
        f"decodeperf: {tmp_path / 'nowhere'} is not a git checkout of the results branch (run decodeperf history-pull)",
    ]
