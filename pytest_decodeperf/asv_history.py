"""Keep pytest runs in asv's results directory, so ``asv compare`` and ``asv publish`` show them.

asv's own ``Results`` class builds, merges and serializes the result files, so they are asv's current
format by construction. What asv does not do, this module adds: asv writes in place (a crash leaves
half a file), so every file here goes to a temporary file that is renamed over; pytest-xdist workers
take turns on a lock; and an existing file that asv could not read is reported and left alone.

A later ``asv run`` rewrites ``benchmarks.json`` with only the benchmarks it ran, and asv ignores
results that ``benchmarks.json`` does not describe. So each machine folder keeps a copy of the
definitions written from there (``SIDECAR``), and ``restore_benchmarks`` puts them back.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asv import util as asv_util
from asv.config import Config
from asv.machine import Machine, MachineCollection
from asv.results import Results, get_filename
from asv.runner import BenchmarkResult
from asv_runner.statistics import compute_stats

from .errors import DecodePerfError
from .records import MachineInfo, ResultRecord

Json = dict[str, Any]

PREFIX = "decodeperf"
SCHEMA = "decodeperf-asv-1"  # bump when a metric's meaning changes: asv then stops comparing across it
SIDECAR = "decodeperf-benchmarks.sidecar"  # not *.json: asv reads every *.json in a machine folder as results
BASE_PARAMS = ("model", "cache", "stream", "batch_size")
OPTIONAL_PARAMS = ("new_tokens", "stop", "compile", "dtype")  # params only where they take several values
PARAM_ORDER = BASE_PARAMS + OPTIONAL_PARAMS
_BROKEN = (asv_util.UserError, ValueError, TypeError, KeyError, AttributeError, IndexError, UnicodeDecodeError)


@dataclass(frozen=True)
class Metric:
    """One lower-is-better quantity: asv flags only increases, so nothing here is a rate."""

    name: str
    type: str  # "time": per-round samples, judged with asv's statistics; "track": one value
    unit: str
    field: str  # the record's samples (a list) or value
    scale: float  # to ``unit``
    doc: str

    def samples(self, rec: ResultRecord) -> list[float] | None:
        raw: Any = rec.get(self.field)
        values = raw if isinstance(raw, list) else [] if raw is None else [raw]
        return [float(v) * self.scale for v in values] or None

    @property
    def version(self) -> str:
        return hashlib.sha256(f"{SCHEMA}:{self.name}:{self.unit}".encode()).hexdigest()


METRICS = (
    Metric("time_decode_per_token", "time", "seconds", "samples_ms_per_token", 1e-3, "decode seconds per token"),
    Metric("time_prefill", "time", "seconds", "samples_prefill_ms", 1e-3, "prefill seconds"),
    Metric("time_round", "time", "seconds", "samples_s", 1.0, "wall seconds of one whole generation"),
    Metric("track_peak_allocated_bytes", "track", "bytes", "peak_allocated_bytes", 1, "peak CUDA memory allocated"),
    Metric("track_peak_reserved_bytes", "track", "bytes", "peak_reserved_bytes", 1, "peak CUDA memory reserved"),
)
_METRIC = {m.name: m for m in METRICS}


@dataclass(frozen=True)
class AsvConfig:
    path: Path
    results_dir: Path
    html_dir: Path
    repo: str  # an absolute path when local
    branches: list[str]


@dataclass(frozen=True)
class Point:
    """One benchmark's value at one parameter combination, with asv's statistics of its samples."""

    benchmark: str
    params: tuple[str, ...]  # repr strings, in the benchmark's param_names order
    value: float  # the median of the samples (time) or the value (track)
    samples: list[float] | None
    stats: Json | None
    test: str
    env: str


@dataclass(frozen=True)
class Definition:
    """An asv benchmarks.json entry, and the values of the optional params it leaves out."""

    entry: Json
    constants: dict[str, str]

    def lists(self) -> dict[str, list[str]]:
        return dict(zip(self.entry["param_names"], self.entry["params"], strict=True)) | {
            dim: [value] for dim, value in self.constants.items()
        }


def read_asv_conf(path: str | Path = "asv.conf.json") -> AsvConfig:
    """asv's config, its directories resolved against the file's folder as asv itself does."""
    conf_path = Path(path).resolve()
    if not conf_path.is_file():
        raise DecodePerfError(f"asv config {path} not found (asv.conf.json with results_dir and html_dir)")
    try:
        conf = Config.load(str(conf_path))
        results_dir, html_dir, repo = str(conf.results_dir), str(conf.html_dir), str(conf.repo)
        branches = [str(b) for b in conf.branches]
    except _BROKEN as exc:
        raise DecodePerfError(f"asv config {path} is invalid: {exc}") from None
    root = conf_path.parent
    local = (root / repo).resolve()
    return AsvConfig(conf_path, root / results_dir, root / html_dir, str(local) if local.exists() else repo, branches)


def git(repo_dir: str | Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def current_commit(repo_dir: str | Path = ".") -> str | None:
    """HEAD's full hash; None outside a git checkout (asv files results by commit, so none can be kept)."""
    return git(repo_dir, "rev-parse", "--verify", "HEAD^{commit}")


def commit_date_ms(repo_dir: str | Path | None, commit: str) -> int | None:
    """The commit's author date in ms, the date ``asv run`` gives a result file."""
    out = git(repo_dir, "rev-list", "-n", "1", "--format=%at", commit) if repo_dir is not None else None
    return int(out.split()[-1]) * 1000 if out and out.split()[-1].isdigit() else None


def machine_name(name: str | None = None) -> str:
    """The name asv would use here: ``~/.asv-machine.json``'s entry for this host, else the hostname."""
    node = platform.uname().node
    try:
        return name or str(MachineCollection.load(node).get("machine", node))
    except (*_BROKEN, OSError):
        return node


def env_name(device: str) -> str:
    """One results file per commit and device: CPU and CUDA numbers of one machine never mix."""
    return f"{PREFIX}-{device}"


def benchmark_name(test: str, metric: str) -> str:
    """``decodeperf.<module>.<Class>.<function>.<metric>`` from a pytest nodeid, param id stripped."""
    path, _, rest = test.split("[", 1)[0].partition("::")
    parts = [Path(path).stem if rest else path, *(p for p in rest.split("::") if p)]
    return ".".join([PREFIX, *(re.sub(r"\W", "_", p) or "_" for p in parts), metric])


def _param_values(rec: ResultRecord) -> dict[str, str]:
    """asv's parameter values are the repr strings of the values."""
    values = (rec["model"], rec["cache"], rec["stream"], rec["batch_size"], rec["new_tokens"], rec["stop"],
              rec["compile"], rec["dtype"])
    return {name: repr(value) for name, value in zip(PARAM_ORDER, values, strict=True)}


def _union(lists: Iterable[Iterable[str]]) -> list[str]:
    return list(dict.fromkeys(itertools.chain.from_iterable(lists)))


def merge_definitions(name: str, defs: Sequence[Definition]) -> Definition:
    """One definition from several (history, other machines, this run): params only ever grow.

    An optional param becomes a real one as soon as any definition has it or two disagree on its
    constant: numbers measured at 32 and 64 new tokens must not land on one line of the history.
    """
    named = {n for d in defs for n in d.entry["param_names"]}
    named |= {dim for dim in OPTIONAL_PARAMS if len({d.constants[dim] for d in defs if dim in d.constants}) > 1}
    names = [n for n in PARAM_ORDER if n in named]
    lists = [d.lists() for d in defs]
    metric, last = _METRIC.get(name.rsplit(".", 1)[-1]), defs[-1].entry
    entry = {
        "name": name, "type": metric.type if metric else last.get("type", "track"),
        "unit": metric.unit if metric else last.get("unit", "unit"),
        "version": metric.version if metric else last.get("version", SCHEMA), "code": last.get("code", ""),
        "params": [_union(ls.get(dim, []) for ls in lists) for dim in names], "param_names": names,
    }
    constants = {dim: c for d in defs for dim, c in d.constants.items() if dim not in named}
    return Definition(entry, constants)


def plan(
    records: Sequence[ResultRecord], known: dict[str, list[Definition]]
) -> tuple[dict[str, Definition], list[Point]]:
    """The definitions that ``records`` need, merged with the ``known`` ones, and their points."""
    rows: dict[str, list[tuple[ResultRecord, Metric, list[float]]]] = {}
    for rec in records:
        for metric in METRICS:
            if (samples := metric.samples(rec)) is not None:
                rows.setdefault(benchmark_name(rec["test"], metric.name), []).append((rec, metric, samples))
    defs: dict[str, Definition] = {}
    points: dict[tuple[str, tuple[str, ...], str], Point] = {}  # a test measured twice: the last counts
    for name, group in rows.items():
        values = {dim: _union([_param_values(rec)[dim]] for rec, _, _ in group) for dim in PARAM_ORDER}
        varying = [d for d in PARAM_ORDER if d in BASE_PARAMS or len(values[d]) > 1]
        code = f"{group[0][0]['test'].split('[', 1)[0]}: {group[0][1].doc} (pytest-decodeperf)"
        run = Definition({"params": [values[d] for d in varying], "param_names": varying, "code": code},
                         {d: values[d][0] for d in OPTIONAL_PARAMS if d not in varying})
        merged = defs[name] = merge_definitions(name, [*known.get(name, []), run])
        for rec, metric, samples in group:
            key, env = tuple(_param_values(rec)[d] for d in merged.entry["param_names"]), env_name(rec["device"])
            if (other := points.get((name, key, env))) is not None and other.test != rec["test"]:
                raise DecodePerfError(f"{other.test} and {rec['test']} measured the same variant {key}: asv history "
                                      "cannot tell them apart; give the tests different names or run them apart")
            value, stats = compute_stats(samples, 1) if metric.type == "time" else (samples[0], None)
            points[(name, key, env)] = Point(name, key, float(value), samples if stats else None, stats,
                                             rec["test"], env)
    return defs, list(points.values())


def _load(path: Path, api_version: int, what: str) -> Any:
    try:
        return asv_util.load_json(str(path), api_version=api_version) if path.exists() else None
    except _BROKEN as exc:
        raise DecodePerfError(f"{path}: not {what} ({exc}); left untouched: fix or move it away") from None


def _benchmarks_json(results_dir: Path) -> Json:
    path = results_dir / "benchmarks.json"
    data = _load(path, 2, "asv's benchmarks.json") or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DecodePerfError(f"{path}: not asv's benchmarks.json; left untouched: fix or move it away")
    return data


def _sidecar(path: Path) -> dict[str, Definition]:
    data = _load(path, 1, "a pytest-decodeperf sidecar") or {"benchmarks": {}}
    try:
        return {name: Definition(dict(d["entry"]), dict(d["constants"])) for name, d in data["benchmarks"].items()}
    except _BROKEN:
        raise DecodePerfError(f"{path}: not a pytest-decodeperf sidecar; left untouched: fix or move it away") from None


def known_definitions(results_dir: Path, bench_json: Json | None = None) -> dict[str, list[Definition]]:
    """Every definition of ours in the history: benchmarks.json's, then each machine's sidecar."""
    bench_json = _benchmarks_json(results_dir) if bench_json is None else bench_json
    sources = [(results_dir / "benchmarks.json",
                {n: Definition(e, {}) for n, e in bench_json.items() if n.startswith(PREFIX + ".")})]
    sources += [(path, _sidecar(path)) for path in sorted(results_dir.glob(f"*/{SIDECAR}"))]
    known: dict[str, list[Definition]] = {}
    for path, defs in sources:
        for name, d in defs.items():
            try:
                d.lists()
            except _BROKEN:
                raise DecodePerfError(f"{path}: {name} has params unlike its param_names; left untouched") from None
            known.setdefault(name, []).append(d)
    return known


def load_results(path: Path, machine: str) -> Any:
    """An asv results file (asv's ``Results``), or a DecodePerfError naming it: never half-trusted."""
    try:
        res = Results.load(str(path), machine_name=machine)
        ok = isinstance(res.commit_hash, str) and res.commit_hash.startswith(path.name.split("-", 1)[0])
    except _BROKEN as exc:
        raise DecodePerfError(f"{path}: not an asv results file ({exc}); left untouched: fix or move it away") from None
    if not ok:
        raise DecodePerfError(f"{path}: its commit_hash does not match its name; left untouched")
    return res


def _write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one; a failed write leaves no temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # not *.json: asv skips it
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sweep_temp_files(results_dir: Path) -> None:
    """Temp files of a writer killed (SIGKILL) before its rename; under the lock none is live."""
    for stale in [*results_dir.glob(".*.tmp"), *results_dir.glob("*/.*.tmp")]:
        with contextlib.suppress(OSError):
            stale.unlink()


def _json_text(data: Json, api_version: int) -> str:
    return json.dumps({**data, "version": api_version}, indent=4, sort_keys=True)  # as asv.util.write_json


@contextlib.contextmanager
def _locked(results_dir: Path) -> Iterator[None]:
    """Writers on this host (pytest-xdist workers) take turns at read-merge-write.

    The lock file is in the temp dir, keyed by the results dir: inside it, the results branch would commit it.
    """
    key = hashlib.sha256(str(results_dir.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"decodeperf-asv-{key}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _machine_fields(name: str, info: MachineInfo) -> dict[str, str]:
    """asv's machine fields as ``asv run`` fills them: its defaults, then ``asv machine``'s answers."""
    fields = {k: str(v) for k, v in Machine.get_defaults().items()}
    measured = {"cpu": info.get("cpu"), "num_cpu": info.get("num_cpu"), "ram": info.get("ram_bytes")}
    fields.update({k: str(v) for k, v in measured.items() if v})
    with contextlib.suppress(*_BROKEN, OSError):
        fields.update({k: str(v) for k, v in MachineCollection.load(name).items() if k in dict(Machine.fields)})
    return {**fields, "machine": name}


def write_history(
    records: Sequence[ResultRecord],
    machine: MachineInfo,
    results_dir: str | Path,
    commit_hash: str,
    *,
    name: str | None = None,
    repo_dir: str | Path | None = None,
    date_ms: int | None = None,
) -> list[Path]:
    """Add a run to asv history: one results file per device, merged into what is there.

    A variant measured again at the same commit gets the new values; every other value stays.
    Returns the results files written. ``date_ms`` defaults to the commit's date in ``repo_dir``.
    """
    results_dir = Path(results_dir)
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit_hash):
        raise DecodePerfError(f"asv history needs a full commit hash, got {commit_hash!r}")
    name = machine_name(name)
    now = datetime.datetime.now(datetime.timezone.utc)
    date = date_ms or commit_date_ms(repo_dir, commit_hash) or asv_util.datetime_to_js_timestamp(now)
    machine_dir, machine_json = results_dir / name, results_dir / name / "machine.json"
    with _locked(results_dir):
        _sweep_temp_files(results_dir)
        bench_json, sidecar = _benchmarks_json(results_dir), _sidecar(machine_dir / SIDECAR)
        known = known_definitions(results_dir, bench_json)
        defs, points = plan(records, known)
        old_machine = _load(machine_json, Machine.api_version, "asv's machine.json") or {"machine": name}
        if not isinstance(old_machine, dict) or old_machine.get("machine") != name:
            raise DecodePerfError(f"{machine_json}: not asv's machine.json for {name!r}; left untouched")
        results = {p.env: _results(results_dir, name, commit_hash, p.env, date, machine) for p in points}
        for env, res in results.items():
            for bench, new in defs.items():
                _reshape(res, bench, merge_definitions(bench, known[bench]) if bench in known else None, new)
            _add_points(res, defs, [p for p in points if p.env == env], now)
        if not points:
            return []

        sidecar_data = {n: {"entry": d.entry, "constants": d.constants} for n, d in sorted({**sidecar, **defs}.items())}
        _write_atomic(machine_dir / SIDECAR, _json_text({"benchmarks": sidecar_data}, 1))
        entries = bench_json | {n: d.entry for n, d in defs.items()}
        _write_atomic(results_dir / "benchmarks.json", _json_text(entries, 2))
        # machine.json also names the GPU and the versions, for people reading the dashboard.
        extra = {k: machine.get(k) for k in ("device", "gpu_name", "gpu_driver", "cuda", "torch", "transformers",
                                              "python", "platform")}
        fields = {**old_machine, **_machine_fields(name, machine), **{k: str(v) for k, v in extra.items() if v}}
        _write_atomic(machine_json, _json_text(fields, Machine.api_version))
        paths = [results_dir / get_filename(name, commit_hash, env) for env in results]
        for path, res in zip(paths, results.values(), strict=True):
            with tempfile.TemporaryDirectory(prefix="decodeperf-asv-") as tmp:  # asv's own serialization
                res.save(tmp)
                _write_atomic(path, (Path(tmp) / path.relative_to(results_dir)).read_text(encoding="utf-8"))
    return paths


def _results(results_dir: Path, machine: str, commit: str, env: str, date: int, info: MachineInfo) -> Any:
    """The results of this commit and env, with what its file already holds."""
    # Graph params: versions stay out (a torch upgrade must not start a new line); they go to requirements.
    python = ".".join(str(info.get("python") or platform.python_version()).split(".")[:2])
    params = {**_machine_fields(machine, info), "python": python, "device": env.removeprefix(PREFIX + "-")}
    requirements = {k: str(info.get(k)) for k in ("torch", "transformers", "cuda", "gpu_driver") if info.get(k)}
    res = Results(params, requirements, commit, date, python, env, {})
    if (path := results_dir / get_filename(machine, commit, env)).exists():
        old = load_results(path, machine)
        if old.commit_hash != commit or old.env_name != env:
            raise DecodePerfError(f"{path}: holds {old.commit_hash} {old.env_name}, not {commit} {env}; left untouched")
        res.load_data(str(results_dir))
    return res


def _reshape(res: Any, name: str, prior: Definition | None, new: Definition) -> None:
    """Keep this file's values of a benchmark that just gained a param; asv's merge would drop them.

    They stand at the constant the param had before: a one-value list added to the params leaves the
    flat order of their product unchanged, so values, stats and samples carry over as they are.
    """
    if name not in res.get_all_result_keys() or len(res.get_result_params(name)) == len(new.entry["param_names"]):
        return
    stored = res.get_result_params(name)
    names = prior.entry["param_names"] if prior else []
    lists = {**prior.lists(), **dict(zip(names, stored, strict=False))} if prior else {}
    if len(stored) != len(names) or not lists.keys() >= set(new.entry["param_names"]):
        raise DecodePerfError(f"{name}: this commit's results have params that no known definition explains")
    values, samples = res.get_result_value(name, stored), res.get_result_samples(name, stored)
    numbers = [(st or {}).get("number") if sa is not None else None
               for st, sa in zip(res.get_result_stats(name, stored), samples, strict=True)]
    entry = {**new.entry, "params": [lists[n] for n in new.entry["param_names"]],
             "version": res.benchmark_version.get(name)}
    res.remove_result(name)
    res.add_result(entry, BenchmarkResult(values, samples, numbers, 0, "", None), record_samples=True)


def _add_points(res: Any, defs: dict[str, Definition], points: Sequence[Point], started: datetime.datetime) -> None:
    """asv's ``add_result`` with only the measured combinations selected: the others keep their values."""
    for bench in sorted({p.benchmark for p in points}):
        entry = defs[bench].entry
        index = {combo: j for j, combo in enumerate(itertools.product(*entry["params"]))}
        result: list[Any] = [None] * len(index)
        samples, number = list(result), list(result)
        mine = [p for p in points if p.benchmark == bench]
        for p in mine:
            result[index[p.params]] = p.value
            if p.samples is not None:  # asv computes the same stats again from the samples
                samples[index[p.params]], number[index[p.params]] = p.samples, 1
        res.add_result(entry, BenchmarkResult(result, samples, number, 0, "", None), started_at=started,
                       record_samples=True, selected_idx={index[p.params] for p in mine})


def restore_benchmarks(results_dir: str | Path) -> list[str]:
    """Put our definitions back into benchmarks.json after an ``asv run`` dropped them.

    Returns the names added or changed; asv's own entries are kept as they are.
    """
    results_dir = Path(results_dir)
    with _locked(results_dir):
        bench_json = _benchmarks_json(results_dir)
        merged = {n: merge_definitions(n, defs).entry for n, defs in known_definitions(results_dir, bench_json).items()}
        changed = sorted(n for n, e in merged.items() if bench_json.get(n) != e)
        if changed:
            _write_atomic(results_dir / "benchmarks.json", _json_text(bench_json | merged, 2))
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``publish``: restore our benchmark definitions, then ``asv publish [ARGS]``; ``restore``: only the first."""
    parser = argparse.ArgumentParser(prog="python -m pytest_decodeperf.asv_history", description=main.__doc__)
    parser.add_argument("command", choices=("publish", "restore"))
    parser.add_argument("--config", default="asv.conf.json", help="asv config (default ./asv.conf.json)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "restore" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        conf = read_asv_conf(args.config)
        changed = restore_benchmarks(conf.results_dir) if conf.results_dir.is_dir() else []
    except DecodePerfError as exc:
        print(f"pytest-decodeperf: {exc}", file=sys.stderr)
        return 2
    print(f"pytest-decodeperf: restored {len(changed)} benchmark definition(s) in {conf.results_dir}", file=sys.stderr)
    if args.command == "restore":
        return 0
    missing = [b for b in conf.branches if git(conf.path.parent, "rev-parse", "--verify", "--quiet", b) is None]
    if missing and Path(conf.repo).is_dir():
        print(f"pytest-decodeperf: {conf.path} lists branch(es) {', '.join(missing)} that {conf.repo} does not have; "
              "asv publish graphs commits of those branches: set \"branches\" to yours", file=sys.stderr)
        return 2
    code = subprocess.run([sys.executable, "-m", "asv", "publish", "--config", str(conf.path), *rest]).returncode
    if code == 0 and conf.html_dir.is_dir():
        from .dashboard import localize

        left = localize(conf.html_dir)
        print(f"pytest-decodeperf: dashboard scripts served from {conf.html_dir / 'vendor'}"
              + (f"; still external: {', '.join(left)}" if left else ""), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
