"""What a run becomes in asv history: benchmark names, parameters, metrics and their points.

A pytest test is an asv benchmark per metric (``decodeperf.<module>.<function>.<metric>``), its
variants the benchmark's parameter combinations. Every metric is lower-is-better (asv flags only
increases), and versioned by ``SCHEMA`` so a change of meaning starts a new line in the history.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asv_runner.statistics import compute_stats

from ..errors import DecodePerfError
from ..records import ResultRecord

Json = dict[str, Any]

PREFIX = "decodeperf"
SCHEMA = "decodeperf-asv-1"  # bump when a metric's meaning changes: asv then stops comparing across it
SIDECAR = "decodeperf-benchmarks.sidecar"  # not *.json: asv reads every *.json in a machine folder as results
BASE_PARAMS = ("model", "cache", "stream", "batch_size")
OPTIONAL_PARAMS = (
    "new_tokens",
    "stop",
    "compile",
    "dtype",
    "prompt_len",
    "prompts",
    "tp",
    "draft",
    "lookup_tokens",
    "attn",
)  # params only where they take several values
PARAM_ORDER = BASE_PARAMS + OPTIONAL_PARAMS
# Params added later, and the value every earlier measurement had (4 random prompt tokens, one process, no draft or
# lookup, the model's default attention kernel).
LEGACY_CONSTANTS = {
    "prompt_len": repr(4),
    "prompts": repr("random"),
    "tp": repr(1),
    "draft": repr(None),
    "lookup_tokens": repr(None),
    "attn": repr(None),
}


@dataclass(frozen=True)
class Metric:
    """One lower-is-better quantity: asv flags only increases, so nothing here is a rate."""

    name: str
    type: str  # "time": per-round samples, judged with asv's statistics; "track": one value
    unit: str
    field: str  # the record's samples (a list) or value
    scale: float  # to ``unit``
    doc: str
    exact: bool = False  # deterministic: any increase is a regression, no statistics
    gate: bool = True  # False: recorded for the dashboard, never a regression (see compare.py)
    ungated: str = ""  # why it is not gated, shown beside it in a comparison
    fallback: str = ""  # the record's field to read where ``field`` is absent (older records)

    def samples(self, rec: ResultRecord) -> list[float] | None:
        raw: Any = rec.get(self.field)
        if not raw and self.fallback:
            raw = rec.get(self.fallback)
        values = raw if isinstance(raw, list) else [] if raw is None else [raw]
        return [float(v) * self.scale for v in values] or None

    @property
    def version(self) -> str:
        return hashlib.sha256(f"{SCHEMA}:{self.name}:{self.unit}".encode()).hexdigest()


METRICS = (
    Metric("time_decode_per_token", "time", "seconds", "samples_ms_per_token", 1e-3, "decode seconds per token"),
    Metric("time_prefill", "time", "seconds", "samples_prefill_ms", 1e-3, "prefill seconds"),
    Metric("time_round", "time", "seconds", "samples_s", 1.0, "wall seconds of one whole generation"),
    # continuous batching (hf-serve): per round, the median request's
    Metric("time_tpot", "time", "seconds", "samples_tpot_ms", 1e-3, "time per output token of a request (serving)"),
    Metric(
        "time_request_ttft",
        "time",
        "seconds",
        "samples_request_ttft_ms",
        1e-3,
        "time to first token of a request, its queueing included (serving)",
    ),
    Metric("track_peak_allocated_bytes", "track", "bytes", "peak_allocated_bytes", 1, "peak CUDA memory allocated"),
    Metric("track_peak_reserved_bytes", "track", "bytes", "peak_reserved_bytes", 1, "peak CUDA memory reserved"),
    Metric(
        "track_syncs_per_step",
        "track",
        "count",
        "syncs_per_step",
        1.0,
        "hidden blocking device reads per decode step (counted by op, deterministic)",
        exact=True,
    ),
    Metric(
        "track_times_roofline_floor",
        "track",
        "ratio",
        "times_floor",
        1.0,
        "decode ms per step over its memory-bandwidth floor (bytes per step / measured bandwidth)",
        gate=False,  # the floor moves with each run's bandwidth measurement: shown, never judged
        ungated="the floor moves with each run's bandwidth",
    ),
    Metric(
        "track_decode_floor_per_token",
        "track",
        "seconds",
        "floor_ms_per_step",
        1e-3,
        "the decode step's memory-bandwidth floor: bytes a step must move / the run's measured copy bandwidth",
        gate=False,
        ungated="the floor moves with each run's bandwidth",
    ),
    Metric(
        "time_itl_p90",
        "time",
        "seconds",
        "samples_itl_p90_ms",
        1e-3,
        "90th percentile of the decode steps' inter-token latency, one per round",
        gate=False,
        ungated="a tail over one round's steps: shown, ms/token is the gated decode time",
    ),
    Metric(
        "time_itl_p99",
        "time",
        "seconds",
        "samples_itl_p99_ms",
        1e-3,
        "99th percentile of the decode steps' inter-token latency, one per round (a stall every N steps shows here)",
        gate=False,
        ungated="a tail over one round's steps: shown, ms/token is the gated decode time",
    ),
    Metric(
        "track_weight_bytes_per_step",
        "track",
        "bytes",
        "weight_bytes_per_step",
        1,
        "weight bytes a decode step reads: dense matrices, gathered embedding rows, the experts routed to",
        gate=False,
        ungated="what the model must read, not how fast",
    ),
    Metric(
        "track_kv_bytes_per_step",
        "track",
        "bytes",
        "kv_bytes_per_step",
        1,
        "K/V bytes a decode step reads and writes",
        gate=False,
        ungated="what the model must read, not how fast",
    ),
    Metric(
        "track_state_bytes_per_step",
        "track",
        "bytes",
        "state_bytes_per_step",
        1,
        "recurrent state (linear attention, conv, SSM layers) a decode step reads and writes",
        gate=False,
        ungated="what the model must read, not how fast",
    ),
    Metric(
        "track_active_experts_per_step",
        "track",
        "count",
        "active_experts_per_step",
        1.0,
        "routed experts a decode step reads, all MoE layers (distinct across the batch, as the routers picked)",
        gate=False,
        ungated="what the routers picked, not how fast",
    ),
    Metric(
        "track_drift_canary",
        "time",  # its samples: the run's start and end timings (older runs: one value)
        "seconds",
        "canary_samples_ms",
        1e-3,
        "a fixed matmul loop on this machine, timed at a run's start and end: the machine's own speed (drift canary)",
        gate=False,  # not a property of the code: compare.py judges the timed metrics against its move
        ungated="the machine's speed, not the code's: each timed metric is judged against its move",
        fallback="canary_ms",
    ),
)
METRIC_BY_NAME = {m.name: m for m in METRICS}


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
    values = (
        rec["model"],
        rec["cache"],
        rec["stream"],
        rec["batch_size"],
        rec["new_tokens"],
        rec["stop"],
        rec["compile"],
        rec["dtype"],
        rec.get("prompt_len", 4),  # records from before the prompt axis: LEGACY_CONSTANTS
        rec.get("prompts", "random"),
        rec.get("tp", 1),  # records from before tensor parallel: one process
        rec.get("draft"),  # records from before speculative modes: none
        rec.get("lookup_tokens"),
        rec.get("attn"),  # records from before the attention axis: the model's default kernel
    )
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
    metric, last = METRIC_BY_NAME.get(name.rsplit(".", 1)[-1]), defs[-1].entry
    entry = {
        "name": name,
        "type": metric.type if metric else last.get("type", "track"),
        "unit": metric.unit if metric else last.get("unit", "unit"),
        "version": metric.version if metric else last.get("version", SCHEMA),
        "code": last.get("code", ""),
        "params": [_union(ls.get(dim, []) for ls in lists) for dim in names],
        "param_names": names,
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
        run = Definition(
            {"params": [values[d] for d in varying], "param_names": varying, "code": code},
            {d: values[d][0] for d in OPTIONAL_PARAMS if d not in varying},
        )
        merged = defs[name] = merge_definitions(name, [*known.get(name, []), run])
        for rec, metric, samples in group:
            key, env = tuple(_param_values(rec)[d] for d in merged.entry["param_names"]), env_name(rec["device"])
            if (other := points.get((name, key, env))) is not None and other.test != rec["test"]:
                raise DecodePerfError(
                    f"{other.test} and {rec['test']} measured the same variant {key}: asv history "
                    "cannot tell them apart; give the tests different names or run them apart"
                )
            value, stats = compute_stats(samples, 1) if metric.type == "time" else (samples[0], None)
            points[(name, key, env)] = Point(
                name, key, float(value), samples if stats else None, stats, rec["test"], env
            )
    return defs, list(points.values())
