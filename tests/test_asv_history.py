"""asv history written from pytest runs: asv's format, merges that never lose data, safe writes.

Records are built by hand (no model): realistic per-round samples with a few percent of noise.
The last tests run the real ``asv`` (compare, run, publish) on what was written.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from asv.results import Results

from pytest_decodeperf.cli import main
from pytest_decodeperf.errors import DecodePerfError
from pytest_decodeperf.history.config import current_commit, read_asv_conf
from pytest_decodeperf.history.schema import SIDECAR, benchmark_name
from pytest_decodeperf.history.storage import restore_benchmarks, write_history
from pytest_decodeperf.records import MachineInfo, ResultRecord

MACHINE = "testbox"
TEST = "perf_tests/test_decode_matrix.py::test_cache_by_stream_mode"
DECODE = "decodeperf.test_decode_matrix.test_cache_by_stream_mode.time_decode_per_token"
INFO = MachineInfo(
    hostname="testbox",
    platform="Linux-6.1-x86_64",
    python="3.11.9",
    cpu="Test CPU",
    num_cpu=16,
    ram_bytes=64 << 30,
    torch="2.13.0",
    transformers="5.23.0",
    cuda=None,
    device="cpu",
    gpu_name=None,
    gpu_driver=None,
)


@pytest.fixture(autouse=True)
def private_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The history lock files go to the temp dir: keep each test's with the test, not in /tmp."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def make_record(
    cache: str = "static",
    stream: str = "baseline",
    batch_size: int = 1,
    ms: float = 2.0,
    *,
    seed: int = 0,
    noise: float = 0.01,
    rounds: int = 7,
    test: str = TEST,
    new_tokens: int = 64,
    device: str = "cpu",
    peak: int | None = None,
) -> ResultRecord:
    """A record as the measurement layer makes it: per-round samples around ``ms`` per token."""
    rng = random.Random(seed)
    per_token = [ms * (1 + rng.gauss(0, noise)) for _ in range(rounds)]
    prefill = [3 * ms * (1 + rng.gauss(0, noise)) for _ in range(rounds)]
    total = [(p + t * (new_tokens - 1)) / 1e3 for p, t in zip(prefill, per_token, strict=True)]
    med = sorted(per_token)[rounds // 2]
    return ResultRecord(
        test=f"{test}[tiny-gpt2-{cache}-{stream}-b{batch_size}]",
        model="tiny-gpt2",
        cache=cache,
        stream=stream,
        batch_size=batch_size,
        new_tokens=new_tokens,
        stop="eos",
        compile=False,
        dtype="float32",
        device=device,
        parity="pass",
        tokens_per_s=1e3 * batch_size / med,
        ms_per_token=med,
        prefill_ms=sorted(prefill)[rounds // 2],
        steps=new_tokens,
        extra_steps=0,
        generated_tokens=new_tokens,
        peak_allocated_bytes=peak,
        peak_reserved_bytes=None if peak is None else 2 * peak,
        rounds=rounds,
        warmup_s=[0.5],
        samples_s=total,
        samples_ms_per_token=per_token,
        samples_prefill_ms=prefill,
        spread_pct=1.0,
        note="",
        stop_reads=new_tokens,
        syncs_per_token=None,
        gpu_idle_fraction=None,
        gpu_idle_us_per_step=None,
        compiled_graphs=None,
        graph_breaks=None,
    )


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, message: str, date: int) -> str:
    (repo / "code.py").write_text(f"# {message}\n")
    git(repo, "add", "code.py")
    stamp = f"{date} +0000"
    os.environ.update(GIT_AUTHOR_DATE=stamp, GIT_COMMITTER_DATE=stamp)
    try:
        git(repo, "commit", "-q", "-m", message)
    finally:
        del os.environ["GIT_AUTHOR_DATE"], os.environ["GIT_COMMITTER_DATE"]
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, list[str]]:
    """A git repository with three commits a day apart, and an asv.conf.json for it."""
    root = tmp_path / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "__init__.py").write_text("")
    (root / "benchmarks" / "bench_other.py").write_text("def time_other():\n    sum(range(100))\n")
    (root / "asv.conf.json").write_text(
        json.dumps(
            {
                "version": 1,
                "project": "proj",
                "repo": ".",
                "branches": ["main"],
                "environment_type": "existing",
                "benchmark_dir": "benchmarks",
                "results_dir": ".asv/results",
                "html_dir": ".asv/html",
            }
        )
    )
    git(root, "add", ".")
    hashes = [commit(root, f"commit {i}", 1_700_000_000 + 86_400 * i) for i in range(3)]
    return root, hashes


def results_dir(repo: tuple[Path, list[str]]) -> Path:
    return repo[0] / ".asv" / "results"


def write(repo: tuple[Path, list[str]], n: int, records: list[ResultRecord]) -> list[Path]:
    return write_history(records, INFO, results_dir(repo), repo[1][n], name=MACHINE, repo_dir=repo[0])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_names_are_test_function_and_metric_without_the_param_id() -> None:
    assert benchmark_name(f"{TEST}[tiny-gpt2-static]", "time_round") == (
        "decodeperf.test_decode_matrix.test_cache_by_stream_mode.time_round"
    )
    assert benchmark_name("a/b/test_x.py::TestY::test_z[p[1]]", "m") == "decodeperf.test_x.TestY.test_z.m"
    assert benchmark_name("engine[tiny-gpt2-static-baseline-b1]", "m") == "decodeperf.engine.m"


def test_round_trip_is_asv_results_format(repo: tuple[Path, list[str]]) -> None:
    records = [make_record("static", "baseline", 1, 2.0), make_record("dynamic", "pipelined", 8, 3.0, seed=1)]
    [path] = write(repo, 0, records)
    rdir = results_dir(repo)
    assert path == rdir / MACHINE / f"{repo[1][0][:8]}-decodeperf-cpu.json"

    bench = json.loads((rdir / "benchmarks.json").read_text())
    assert bench["version"] == 2
    entry = bench[DECODE]
    assert entry["type"] == "time" and entry["unit"] == "seconds"
    assert entry["param_names"] == ["model", "cache", "stream", "batch_size"]  # new_tokens etc. do not vary
    assert entry["params"] == [["'tiny-gpt2'"], ["'static'", "'dynamic'"], ["'baseline'", "'pipelined'"], ["1", "8"]]
    assert not any(name.startswith("decodeperf.") and "peak" in name for name in bench)  # CPU: no peak memory

    machine = json.loads((rdir / MACHINE / "machine.json").read_text())
    assert machine["version"] == 1 and machine["machine"] == MACHINE
    assert {"arch", "cpu", "machine", "num_cpu", "os", "ram"} <= machine.keys()
    assert (machine["cpu"], machine["num_cpu"], machine["torch"]) == ("Test CPU", "16", "2.13.0")

    raw = json.loads(path.read_text())
    assert raw["version"] == 2 and raw["commit_hash"] == repo[1][0] and raw["env_name"] == "decodeperf-cpu"
    assert raw["result_columns"][:6] == ["result", "params", "version", "started_at", "duration", "stats_ci_99_a"]
    assert raw["requirements"]["torch"] == "2.13.0" and raw["params"]["machine"] == MACHINE

    res = Results.load(str(path), machine_name=MACHINE)
    assert res.benchmark_version[DECODE] == entry["version"]
    values = res.get_result_value(DECODE, entry["params"])
    samples = res.get_result_samples(DECODE, entry["params"])
    stats = res.get_result_stats(DECODE, entry["params"])
    combos = list(itertools.product(*entry["params"]))
    assert len(values) == len(combos) == 8
    measured = {
        combos.index(("'tiny-gpt2'", "'static'", "'baseline'", "1")): records[0],
        combos.index(("'tiny-gpt2'", "'dynamic'", "'pipelined'", "8")): records[1],
    }
    for j, value in enumerate(values):
        if j not in measured:
            assert value is None and samples[j] is None  # flat over the product, null where not measured
            continue
        want = [ms / 1e3 for ms in measured[j]["samples_ms_per_token"]]
        assert samples[j] == pytest.approx(want)
        assert value == pytest.approx(sorted(want)[3])
        assert stats[j]["ci_99_a"] <= value <= stats[j]["ci_99_b"]
        assert stats[j]["q_25"] <= value <= stats[j]["q_75"]
        assert (stats[j]["number"], stats[j]["repeat"]) == (1, 7)


def test_peak_memory_is_a_track_benchmark_in_bytes(repo: tuple[Path, list[str]]) -> None:
    [path] = write(repo, 0, [make_record(peak=123_456_789, device="cuda")])
    assert path.name.endswith("-decodeperf-cuda.json")
    bench = json.loads((results_dir(repo) / "benchmarks.json").read_text())
    name = DECODE.replace("time_decode_per_token", "track_peak_allocated_bytes")
    assert (bench[name]["type"], bench[name]["unit"]) == ("track", "bytes")
    res = Results.load(str(path))
    assert res.get_result_value(name, bench[name]["params"]) == [123_456_789]
    assert res.get_result_stats(name, bench[name]["params"]) == [None]


def test_a_param_that_varies_once_stays_a_param(repo: tuple[Path, list[str]]) -> None:
    rdir = results_dir(repo)
    write(repo, 0, [make_record(new_tokens=64)])
    assert json.loads((rdir / "benchmarks.json").read_text())[DECODE]["param_names"] == [
        "model",
        "cache",
        "stream",
        "batch_size",
    ]
    write(repo, 1, [make_record(new_tokens=32)])  # a different constant: never one line with the 64-token numbers
    entry = json.loads((rdir / "benchmarks.json").read_text())[DECODE]
    assert entry["param_names"] == ["model", "cache", "stream", "batch_size", "new_tokens"]
    assert entry["params"][-1] == ["64", "32"]
    write(repo, 2, [make_record(new_tokens=32)])
    assert json.loads((rdir / "benchmarks.json").read_text())[DECODE] == entry


def test_a_param_split_across_writers_keeps_every_value(repo: tuple[Path, list[str]]) -> None:
    """pytest-xdist: one worker writes the 64-token variants, another the 32-token ones, same commit."""
    rdir = results_dir(repo)
    write(repo, 0, [make_record(new_tokens=64, ms=2.0), make_record("dynamic", new_tokens=64, ms=3.0)])
    [path] = write(repo, 0, [make_record(new_tokens=32, ms=1.0)])
    entry = json.loads((rdir / "benchmarks.json").read_text())[DECODE]
    assert entry["param_names"][-1] == "new_tokens" and entry["params"][-1] == ["64", "32"]
    res = Results.load(str(path))
    values = dict(zip(itertools.product(*entry["params"]), res.get_result_value(DECODE, entry["params"]), strict=True))
    stats = dict(zip(itertools.product(*entry["params"]), res.get_result_stats(DECODE, entry["params"]), strict=True))
    key = ("'tiny-gpt2'", "'static'", "'baseline'", "1")
    assert values[(*key, "64")] == pytest.approx(2e-3, rel=0.05) and stats[(*key, "64")]["repeat"] == 7
    assert values[(*key, "32")] == pytest.approx(1e-3, rel=0.05)
    assert values[("'tiny-gpt2'", "'dynamic'", "'baseline'", "1", "64")] == pytest.approx(3e-3, rel=0.05)


def test_merge_keeps_other_benchmarks_and_a_rerun_replaces_its_own(repo: tuple[Path, list[str]]) -> None:
    rdir = results_dir(repo)
    (rdir).mkdir(parents=True)
    asv_entry = {
        "name": "bench_other.time_other",
        "params": [],
        "param_names": [],
        "type": "time",
        "unit": "seconds",
        "version": "abc",
    }
    (rdir / "benchmarks.json").write_text(json.dumps({"bench_other.time_other": asv_entry, "version": 2}))
    write(repo, 0, [make_record("static", ms=2.0)])
    write(repo, 0, [make_record("dynamic", ms=4.0)])  # same commit, another variant
    [path] = write(repo, 0, [make_record("static", ms=5.0, seed=9)])  # the static variant again
    bench = json.loads((rdir / "benchmarks.json").read_text())
    assert bench["bench_other.time_other"] == asv_entry
    res = Results.load(str(path))
    params = bench[DECODE]["params"]
    values = dict(zip(itertools.product(*params), res.get_result_value(DECODE, params), strict=True))
    assert values[("'tiny-gpt2'", "'static'", "'baseline'", "1")] == pytest.approx(5e-3, rel=0.05)
    assert values[("'tiny-gpt2'", "'dynamic'", "'baseline'", "1")] == pytest.approx(4e-3, rel=0.05)
    other_test = make_record(test="perf_tests/test_more.py::test_more")
    write(repo, 0, [other_test])
    assert {DECODE, "decodeperf.test_more.test_more.time_round"} <= Results.load(str(path)).get_all_result_keys()


def test_restore_puts_back_what_an_asv_run_dropped(repo: tuple[Path, list[str]]) -> None:
    rdir = results_dir(repo)
    write(repo, 0, [make_record()])
    ours = json.loads((rdir / "benchmarks.json").read_text())
    assert (rdir / MACHINE / SIDECAR).exists()
    asv_only = {"bench_other.time_other": {"name": "bench_other.time_other", "params": [], "param_names": []}}
    (rdir / "benchmarks.json").write_text(json.dumps({**asv_only, "version": 2}))
    restored = restore_benchmarks(rdir)
    assert DECODE in restored
    assert json.loads((rdir / "benchmarks.json").read_text()) == {**ours, **asv_only}
    assert restore_benchmarks(rdir) == []


def test_the_restore_command_reads_the_asv_config(
    repo: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    rdir = results_dir(repo)
    write(repo, 0, [make_record()])
    (rdir / "benchmarks.json").write_text(json.dumps({"version": 2}))
    assert main(["restore", "--config", str(repo[0] / "asv.conf.json")]) == 0
    assert DECODE in json.loads((rdir / "benchmarks.json").read_text())
    assert main(["restore", "--config", str(repo[0] / "missing.json")]) == 2
    assert "missing.json not found" in capsys.readouterr().err


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])
@pytest.mark.parametrize("step", ["replace", "fsync"])
def test_an_interrupted_write_leaves_whole_files_and_no_temp_file(
    repo: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch, step: str, crash_at: int
) -> None:
    """Killed before the rename (or mid-write): each file is its old self or its new self, never half."""
    rdir = results_dir(repo)
    [result] = write(repo, 0, [make_record()])
    before = snapshot(rdir)
    calls = []
    real = getattr(os, step)

    def crash(*args: object) -> None:
        calls.append(args)
        if len(calls) == crash_at:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(os, step, crash)
    with pytest.raises(KeyboardInterrupt):
        write(repo, 0, [make_record("dynamic", ms=9.0)])
    monkeypatch.undo()
    after = snapshot(rdir)
    assert after.keys() == before.keys()  # no temp file left behind
    assert after[str(result.relative_to(rdir))] == before[str(result.relative_to(rdir))]  # results are written last
    for path in after:
        json.loads(after[path])


BROKEN: dict[str, Callable[[str], str]] = {
    "truncated": lambda text: text[: len(text) // 2],
    "not json": lambda text: "\x00garbage",
    "foreign": lambda text: json.dumps({"version": 2, "something": "else"}),
    "newer asv": lambda text: text.replace('"version": 2', '"version": 3').replace('"version": 1', '"version": 3'),
    "a list": lambda text: "[1, 2, 3]",
}


@pytest.mark.parametrize("damage", sorted(BROKEN))
@pytest.mark.parametrize("victim", ["result", "benchmarks.json", "machine.json", "sidecar"])
def test_a_damaged_history_file_is_reported_and_left_untouched(
    repo: tuple[Path, list[str]], victim: str, damage: str
) -> None:
    rdir = results_dir(repo)
    [result] = write(repo, 0, [make_record()])
    path = {
        "result": result,
        "benchmarks.json": rdir / "benchmarks.json",
        "machine.json": rdir / MACHINE / "machine.json",
        "sidecar": rdir / MACHINE / SIDECAR,
    }[victim]
    path.write_text(BROKEN[damage](path.read_text()))
    before = snapshot(rdir)
    with pytest.raises(DecodePerfError, match=str(path.name)):
        write(repo, 0, [make_record(ms=3.0)])
    assert snapshot(rdir) == before


def _worker(args: tuple[str, str, int]) -> None:
    rdir, commit_hash, worker = args
    for i in range(3):
        rec = make_record("static", "baseline", batch_size=10 * worker + i + 1, seed=worker)
        write_history([rec], INFO, rdir, commit_hash, name=MACHINE, repo_dir=None, date_ms=1)


def test_concurrent_writers_lose_nothing(repo: tuple[Path, list[str]]) -> None:
    rdir = results_dir(repo)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_worker, [(str(rdir), repo[1][0], w) for w in range(4)])
    bench = json.loads((rdir / "benchmarks.json").read_text())
    [path] = (rdir / MACHINE).glob("*-decodeperf-cpu.json")
    values = Results.load(str(path)).get_result_value(DECODE, bench[DECODE]["params"])
    assert sorted(bench[DECODE]["params"][3], key=int) == [str(10 * w + i + 1) for w in range(4) for i in range(3)]
    assert sum(v is not None for v in values) == 12
    assert not [p for p in rdir.rglob("*.tmp")]


def test_two_tests_measuring_one_variant_are_refused(repo: tuple[Path, list[str]]) -> None:
    twin = make_record()
    twin["test"] = twin["test"].replace("]", "-again]")
    with pytest.raises(DecodePerfError, match="cannot tell"):
        write(repo, 0, [make_record(), twin])


def test_config_and_commit_helpers(repo: tuple[Path, list[str]], tmp_path: Path) -> None:
    conf = read_asv_conf(repo[0] / "asv.conf.json")
    assert conf.results_dir == repo[0] / ".asv" / "results" and conf.html_dir == repo[0] / ".asv" / "html"
    assert conf.repo == str(repo[0])
    with pytest.raises(DecodePerfError, match="not found"):
        read_asv_conf(tmp_path / "nowhere.json")
    (tmp_path / "bad.json").write_text('{"version": 1, "repo": ')
    with pytest.raises(DecodePerfError, match="invalid"):
        read_asv_conf(tmp_path / "bad.json")
    assert current_commit(repo[0]) == repo[1][-1]
    (tmp_path / "plain").mkdir()
    assert current_commit(tmp_path / "plain") is None
    with pytest.raises(DecodePerfError, match="full commit hash"):
        write_history([make_record()], INFO, results_dir(repo), "HEAD", name=MACHINE)


def asv(root: Path, *args: str) -> str:
    """The real asv, with its own HOME so the user's ~/.asv-machine.json is never touched."""
    env = {**os.environ, "HOME": str(root.parent / "home"), "TMPDIR": str(root.parent / "tmp")}
    out = subprocess.run(
        [sys.executable, "-m", "asv", *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_asv_compare_run_and_publish_read_what_is_written(repo: tuple[Path, list[str]]) -> None:
    root, hashes = repo
    for n, ms in ((0, 2.0), (1, 2.0), (2, 2.4)):  # the third commit is 20% slower
        write(repo, n, [make_record("static", ms=ms, seed=n), make_record("dynamic", ms=2 * ms, seed=10 + n)])

    out = asv(root, "compare", hashes[1], hashes[2], "--machine", MACHINE, "--factor", "1.05")
    line = next(x for x in out.splitlines() if "time_decode_per_token('tiny-gpt2', 'static'" in x)
    change, before, after, ratio = (cell.strip() for cell in line.split("|")[1:5])  # a GitHub-style table
    assert (change, before, after) == ("+", "2.00±0.02ms", "2.40±0.01ms") and float(ratio) == pytest.approx(1.2), out

    # asv run rewrites benchmarks.json with only its own benchmarks ...
    (root.parent / "home").mkdir()
    asv(root, "machine", "--yes", "--machine", MACHINE)
    asv(root, "run", "--python=same", "--quick", "--set-commit-hash", hashes[2], "--machine", MACHINE)
    assert DECODE not in json.loads((root / ".asv" / "results" / "benchmarks.json").read_text())
    # ... and publishing through pytest-decodeperf puts ours back first.
    env = {**os.environ, "HOME": str(root.parent / "home"), "TMPDIR": str(root.parent / "tmp")}
    subprocess.run(
        [sys.executable, "-m", "pytest_decodeperf", "publish", "--config", "asv.conf.json"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    html = root / ".asv" / "html"
    index = json.loads((html / "index.json").read_text())
    assert DECODE in index["benchmarks"] and "bench_other.time_other" in index["benchmarks"]
    assert index["params"]["machine"] == [MACHINE]
    assert list(html.glob(f"graphs/**/{DECODE}.json"))
    regressions = json.loads((html / "regressions.json").read_text())["regressions"]
    flagged = {entry[0] for entry in regressions}
    assert f"{DECODE}('tiny-gpt2', 'static', 'baseline', 1)" in flagged, regressions
    assert all(name.startswith("decodeperf.") for name in flagged)


def test_a_history_from_before_the_prompt_axis_grows_it_instead_of_mixing_lengths(
    repo: tuple[Path, list[str]],
) -> None:
    """Sidecars written before prompt_len existed hold 4-token numbers: a run at 16 tokens must get its own line."""
    rdir = results_dir(repo)
    write(repo, 0, [make_record()])
    for sidecar in rdir.glob("*/decodeperf-benchmarks.sidecar"):
        data = json.loads(sidecar.read_text())
        for bench in data["benchmarks"].values():  # as an older version wrote it
            bench["constants"].pop("prompt_len", None)
            bench["constants"].pop("prompts", None)
        sidecar.write_text(json.dumps(data))
    longer = make_record(ms=3.0)
    longer["prompt_len"] = 16
    write(repo, 1, [longer])
    entry = json.loads((rdir / "benchmarks.json").read_text())[DECODE]
    assert entry["param_names"][-1] == "prompt_len" and entry["params"][-1] == ["4", "16"]
