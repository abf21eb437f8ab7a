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

import contextlib
import datetime
import hashlib
import itertools
import json
import platform
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from asv import util as asv_util
from asv.machine import Machine, MachineCollection
from asv.results import Results, get_filename
from asv.runner import BenchmarkResult
from filelock import FileLock

from .. import fingerprint
from ..atomic import write_text_atomic
from ..errors import DecodePerfError
from ..records import MachineInfo, ResultRecord
from .config import BROKEN, commit_date_ms, machine_name
from .schema import (
    LEGACY_CONSTANTS,
    PREFIX,
    SIDECAR,
    Definition,
    Json,
    Point,
    merge_definitions,
    plan,
)


def _load(path: Path, api_version: int, what: str) -> Any:
    try:
        return asv_util.load_json(str(path), api_version=api_version) if path.exists() else None
    except BROKEN as exc:
        raise DecodePerfError(f"{path}: not {what} ({exc}); left untouched: fix or move it away") from None


def _benchmarks_json(results_dir: Path) -> Json:
    path = results_dir / "benchmarks.json"
    data = _load(path, 2, "asv's benchmarks.json") or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DecodePerfError(f"{path}: not asv's benchmarks.json; left untouched: fix or move it away")
    return data


def legacy_constants(entry: Json, constants: dict[str, str]) -> dict[str, str]:
    """A sidecar written before a param existed measured at its old fixed value: say so, so that a run
    at another value makes it a real param instead of landing on the old line."""
    names = set(entry.get("param_names", ()))
    return {dim: value for dim, value in LEGACY_CONSTANTS.items() if dim not in names} | constants


def _sidecar(path: Path) -> dict[str, Definition]:
    data = _load(path, 1, "a pytest-decodeperf sidecar") or {"benchmarks": {}}
    try:
        return {
            name: Definition(dict(d["entry"]), legacy_constants(d["entry"], dict(d["constants"])))
            for name, d in data["benchmarks"].items()
        }
    except BROKEN:
        raise DecodePerfError(f"{path}: not a pytest-decodeperf sidecar; left untouched: fix or move it away") from None


def known_definitions(results_dir: Path, bench_json: Json | None = None) -> dict[str, list[Definition]]:
    """Every definition of ours in the history: benchmarks.json's, then each machine's sidecar."""
    bench_json = _benchmarks_json(results_dir) if bench_json is None else bench_json
    sources = [
        (
            results_dir / "benchmarks.json",
            {n: Definition(e, {}) for n, e in bench_json.items() if n.startswith(PREFIX + ".")},
        )
    ]
    sources += [(path, _sidecar(path)) for path in sorted(results_dir.glob(f"*/{SIDECAR}"))]
    known: dict[str, list[Definition]] = {}
    for path, defs in sources:
        for name, d in defs.items():
            try:
                d.lists()
            except BROKEN:
                raise DecodePerfError(f"{path}: {name} has params unlike its param_names; left untouched") from None
            known.setdefault(name, []).append(d)
    return known


def load_results(path: Path, machine: str) -> Any:
    """An asv results file (asv's ``Results``), or a DecodePerfError naming it: never half-trusted."""
    try:
        res = Results.load(str(path), machine_name=machine)
        ok = isinstance(res.commit_hash, str) and res.commit_hash.startswith(path.name.split("-", 1)[0])
    except BROKEN as exc:
        raise DecodePerfError(f"{path}: not an asv results file ({exc}); left untouched: fix or move it away") from None
    if not ok:
        raise DecodePerfError(f"{path}: its commit_hash does not match its name; left untouched")
    return res


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
    with FileLock(Path(tempfile.gettempdir()) / f"decodeperf-asv-{key}.lock"):
        yield


def _machine_fields(name: str, info: MachineInfo) -> dict[str, str]:
    """asv's machine fields as ``asv run`` fills them: its defaults, then ``asv machine``'s answers."""
    fields = {k: str(v) for k, v in Machine.get_defaults().items()}
    measured = {"cpu": info.get("cpu"), "num_cpu": info.get("num_cpu"), "ram": info.get("ram_bytes")}
    fields.update({k: str(v) for k, v in measured.items() if v})
    with contextlib.suppress(*BROKEN, OSError):
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
        write_text_atomic(machine_dir / SIDECAR, _json_text({"benchmarks": sidecar_data}, 1))
        entries = bench_json | {n: d.entry for n, d in defs.items()}
        write_text_atomic(results_dir / "benchmarks.json", _json_text(entries, 2))
        # machine.json also names the device, the platform and the fingerprint (GPU, versions, clocks, governor),
        # for people reading the dashboard: the latest run's, as asv keeps it.
        extra = {k: str(v) for k in ("device", "platform") if (v := machine.get(k))} | fingerprint.of(machine)
        fields = {**old_machine, **_machine_fields(name, machine), **extra}
        write_text_atomic(machine_json, _json_text(fields, Machine.api_version))
        paths = [results_dir / get_filename(name, commit_hash, env) for env in results]
        for path, res in zip(paths, results.values(), strict=True):
            with tempfile.TemporaryDirectory(prefix="decodeperf-asv-") as tmp:  # asv's own serialization
                res.save(tmp)
                write_text_atomic(path, (Path(tmp) / path.relative_to(results_dir)).read_text(encoding="utf-8"))
    return paths


def _results(results_dir: Path, machine: str, commit: str, env: str, date: int, info: MachineInfo) -> Any:
    """The results of this commit and env, with what its file already holds."""
    # Graph params: versions stay out (a torch upgrade must not start a new line); the fingerprint (versions, GPU,
    # clocks, governor, threads) goes to requirements, where the gate reads the reference run's (compare.py).
    python = ".".join(str(info.get("python") or platform.python_version()).split(".")[:2])
    params = {**_machine_fields(machine, info), "python": python, "device": env.removeprefix(PREFIX + "-")}
    requirements = fingerprint.of(info)
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
    numbers = [
        (st or {}).get("number") if sa is not None else None
        for st, sa in zip(res.get_result_stats(name, stored), samples, strict=True)
    ]
    entry = {
        **new.entry,
        "params": [lists[n] for n in new.entry["param_names"]],
        "version": res.benchmark_version.get(name),
    }
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
        res.add_result(
            entry,
            BenchmarkResult(result, samples, number, 0, "", None),
            started_at=started,
            record_samples=True,
            selected_idx={index[p.params] for p in mine},
        )


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
            write_text_atomic(results_dir / "benchmarks.json", _json_text(bench_json | merged, 2))
    return changed
