"""Command-line options, their ini twins, and how a value is resolved and checked.

Every ``--decodeperf-X`` flag has an ini key ``decodeperf_X`` with the same help text and an
environment variable ``DECODEPERF_X``. A value comes from the command line, else the
environment, else the ini file, else the default; a bad one is reported with where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .errors import DecodePerfError, check_choice
from .option_values import (
    _attn_names,
    _bool,
    _cache_names,
    _checkpoint,
    _dir,
    _int,
    _interpreter,
    _ints,
    _labels,
    _names,
    _pct,
    _profile,
    _prompt_lens,
    _seconds,
    _stream_mode_names,
    _timeout,
    _writable_file,
)


@dataclass(frozen=True)
class OptionSpec:
    name: str  # flag suffix: --decodeperf-<name>
    help: str
    parse: Callable[[Any], Any]
    default: Any = None
    metavar: str | None = None
    flag: bool = False  # store_true on the command line
    optional_value: bool = False  # --x or --x=VALUE
    const: str = ""

    @property
    def dest(self) -> str:
        return "decodeperf_" + self.name.replace("-", "_") if self.name else "decodeperf"

    @property
    def flag_name(self) -> str:
        return "--decodeperf" + (f"-{self.name}" if self.name else "")

    @property
    def env(self) -> str:
        return self.dest.upper()


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("", "run tests marked decode_perf (they are skipped without it)", _bool, False, flag=True),
    OptionSpec(
        "device",
        "device to decode on: auto (cuda when available), cpu or cuda",
        lambda t: check_choice("device", str(t).strip(), ("auto", "cpu", "cuda")),
        "auto",
        metavar="{auto,cpu,cuda}",
    ),
    OptionSpec(
        "models",
        "comma list of models that narrows the marker's matrix",
        _labels("model"),
        None,
        metavar="NAMES",
    ),
    OptionSpec(
        "caches",
        "comma list of cache types that narrows the marker's matrix",
        _names("cache type", _cache_names),
        None,
        metavar="NAMES",
    ),
    OptionSpec(
        "streams",
        "comma list of stream modes that narrows the marker's matrix",
        _names("stream mode", _stream_mode_names),
        None,
        metavar="NAMES",
    ),
    OptionSpec(
        "batch-sizes",
        "comma list of batch sizes that narrows the marker's matrix",
        _ints("batch size"),
        None,
        metavar="N,N",
    ),
    OptionSpec(
        "new-tokens",
        "max new tokens per row, overriding the marker's new_tokens",
        _int("new tokens", 1),
        None,
        metavar="N",
    ),
    OptionSpec(
        "prompt-lens",
        "comma list of prompt lengths, 'mixed' for left-padded rows of different lengths up to the longest, "
        "overriding the marker's prompt_lens (default on CPU: 4; on CUDA: 128,512)",
        _prompt_lens,
        None,
        metavar="N,N,mixed",
    ),
    OptionSpec(
        "model-path",
        "a saved checkpoint directory measured in place of the default model (markers without models=): "
        "from_pretrained with local files only, never trust_remote_code",
        _checkpoint,
        None,
        metavar="DIR",
    ),
    OptionSpec(
        "dtype",
        "weights' dtype for every variant, overriding the marker's dtype: float32, float16 or bfloat16",
        lambda t: check_choice("dtype", str(t).strip(), ("float32", "float16", "bfloat16")),
        None,
        metavar="{float32,float16,bfloat16}",
    ),
    OptionSpec(
        "tp",
        "comma list of tensor-parallel sizes, overriding the marker's tp for every model transformers can shard "
        "(others stay at 1); one node: the plugin starts the ranks, under torchrun/SLURM the launch's ranks run",
        _ints("tp"),
        None,
        metavar="N,N",
    ),
    OptionSpec(
        "attn",
        "comma list of attention kernels (transformers' attn_implementation: sdpa, eager, flex_attention), overriding "
        "the marker's attn: sdpa,eager doubles every row",
        _names("attention kernel", _attn_names),
        None,
        metavar="NAMES",
    ),
    OptionSpec(
        "tp-timeout",
        "seconds a tensor-parallel rank waits in a collective (the process group's timeout) before it fails the "
        "item: a rank that died or raised ends the item, never hangs it (default 300)",
        _timeout,
        300.0,
        metavar="S",
    ),
    OptionSpec(
        "rounds",
        "timed rounds per variant, at least (default 5; more while the median is not pinned, see max-time)",
        _int("rounds", 1),
        5,
        metavar="N",
    ),
    OptionSpec(
        "max-time",
        "seconds of more timed rounds per variant once --decodeperf-rounds are in, spent only while the "
        "median's 95% interval is wider than +-2% (default 2; 0: exactly --decodeperf-rounds)",
        _seconds,
        2.0,
        metavar="S",
    ),
    OptionSpec("warmup", "warmup rounds per variant, timed apart (default 1)", _int("warmup", 0), 1, metavar="N"),
    OptionSpec("json", "write the results as JSON to PATH", _writable_file, None, metavar="PATH"),
    OptionSpec(
        "markdown",
        "write a Markdown report to PATH: the results, the history and A/B verdicts (worse first), and for each "
        "failing item the command that reproduces it alone; with GITHUB_STEP_SUMMARY set (a GitHub Actions step) it "
        "is appended there too, PATH or not (-p no:decodeperf-markdown: nowhere)",
        _writable_file,
        None,
        metavar="PATH",
    ),
    OptionSpec("nvtx", "annotate steps, forwards and stop checks with NVTX ranges", _bool, False, flag=True),
    OptionSpec(
        "profile-steps",
        "open a cudaProfilerApi capture window over decode steps START:STOP "
        "(for nsys profile --capture-range=cudaProfilerApi; CUDA only)",
        _profile,
        None,
        metavar="START:STOP",
    ),
    OptionSpec(
        "asv",
        "record the results in asv history (the results_dir of asv.conf.json, or PATH)",
        lambda t: str(t),
        None,
        metavar="PATH",
        optional_value=True,
        const="",
    ),
    OptionSpec(
        "asv-config",
        "asv.conf.json to read the results directory from (default ./asv.conf.json)",
        lambda t: Path(str(t)),
        Path("asv.conf.json"),
        metavar="PATH",
    ),
    OptionSpec(
        "compare",
        "compare with asv history: REF is a commit, default the latest earlier one",
        lambda t: str(t),
        None,
        metavar="REF",
        optional_value=True,
        const="latest",
    ),
    OptionSpec(
        "ab",
        "same-session A/B: time REF (default HEAD~1, or the merge base on a branch) against this checkout, "
        "rounds interleaved, and fail on a significant slowdown",
        lambda t: str(t).strip(),
        None,
        metavar="REF",
        optional_value=True,
        const="",
    ),
    OptionSpec(
        "ab-python",
        "A/B across environments: side A (the reference) runs with this interpreter (another venv: an older "
        "torch or transformers); alone, both sides run this checkout's code; with --decodeperf-ab, REF's. The "
        "verdict names the packages whose versions differ",
        _interpreter,
        None,
        metavar="PATH",
    ),
    OptionSpec(
        "ab-max-pairs",
        "with --decodeperf-ab: the most A/B round pairs per variant before the verdict is UNKNOWN, spread over "
        "the process pairs (default 200)",
        _int("A/B pairs", 10),
        200,
        metavar="N",
    ),
    OptionSpec(
        "ab-processes",
        "with --decodeperf-ab: the most process pairs (a fresh worker per side each) per run; each is one "
        "observation of B/A, and a verdict needs at least 3 (default 10)",
        _int("A/B process pairs", 3),
        10,
        metavar="N",
    ),
    OptionSpec(
        "fail-on-regression",
        "with --decodeperf-compare or --decodeperf-ab: fail when a metric is significantly worse by more than PCT "
        "percent (default 5)",
        _pct,
        5.0,
        metavar="PCT",
    ),
    OptionSpec("plot", "write PNG plots of the results into DIR (needs matplotlib)", _dir, None, metavar="DIR"),
    OptionSpec(
        "threads",
        "torch threads while measuring (default on CPU: 1, steady on a shared machine; on CUDA: torch's own)",
        _int("threads", 1),
        None,
        metavar="N",
    ),
    OptionSpec(
        "benchmark-table",
        "also print pytest-benchmark's own tables (by default only the decode perf table is printed, as with "
        "--benchmark-quiet: --benchmark-json/-autosave/-compare-fail still work; --benchmark-histogram prints them)",
        _bool,
        False,
        flag=True,
    ),
    OptionSpec(
        "share-gpu",
        "with pytest-xdist: allow more workers than GPUs (they share GPUs and disturb timings)",
        _bool,
        False,
        flag=True,
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("decodeperf", "decode performance (pytest-decodeperf)")
    for spec in OPTIONS:
        kwargs: dict[str, Any] = {"dest": spec.dest, "default": None, "help": spec.help.replace("%", "%%")}
        if spec.flag:
            kwargs["action"] = "store_true"
        elif spec.optional_value:
            kwargs.update(nargs="?", const=spec.const, metavar=spec.metavar)
        else:
            kwargs["metavar"] = spec.metavar
        group.addoption(spec.flag_name, **kwargs)
        parser.addini(spec.dest, spec.help, type="string", default=None)


def source_of(config: pytest.Config, name: str) -> str:
    """Where option ``name`` (a flag suffix such as ``device``) took its value from."""
    spec = next(s for s in OPTIONS if s.name == name)
    if config.getoption(spec.dest) not in (None, False):
        return f"command line {spec.flag_name}"
    if os.environ.get(spec.env) is not None:
        return f"environment variable {spec.env}"
    if config.getini(spec.dest) not in (None, ""):
        return f"{spec.dest} in {config.inipath.name if config.inipath else 'ini file'}"
    return "the default"


def resolve(config: pytest.Config, spec: OptionSpec) -> Any:
    """The option's value: command line, else environment, else ini, else default; checked."""
    raw: Any = config.getoption(spec.dest)
    if spec.flag and raw is False:
        raw = None
    source = f"command line {spec.flag_name}"
    if raw is None and os.environ.get(spec.env) is not None:
        raw, source = os.environ[spec.env], f"environment variable {spec.env}"
    if raw is None:
        ini = config.getini(spec.dest)
        if ini not in (None, ""):
            where = config.inipath.name if config.inipath else "ini file"
            raw, source = ini, f"{spec.dest} in {where}"
    if raw is None:
        return spec.default
    try:
        return spec.parse(raw)
    except DecodePerfError as exc:
        raise pytest.UsageError(f"pytest-decodeperf: {exc} (from {source})") from None


@dataclass(frozen=True)
class Settings:
    enabled: bool
    device: str
    models: tuple[str, ...] | None
    caches: tuple[str, ...] | None
    streams: tuple[str, ...] | None
    batch_sizes: tuple[int, ...] | None
    new_tokens: int | None
    prompt_lens: tuple[int | str, ...] | None
    model_path: str | None
    dtype: str | None
    tp: tuple[int, ...] | None
    attn: tuple[str, ...] | None
    tp_timeout: float
    rounds: int
    max_time: float
    warmup: int
    json: Path | None
    markdown: Path | None
    nvtx: bool
    profile_steps: tuple[int, int] | None
    asv: str | None
    asv_config: Path
    compare: str | None
    ab: str | None
    ab_python: str | None
    ab_max_pairs: int
    ab_processes: int
    fail_on_regression: float
    plot: Path | None
    benchmark_table: bool
    share_gpu: bool
    threads: int | None


def load_settings(config: pytest.Config) -> Settings:
    values = {(spec.name.replace("-", "_") or "enabled"): resolve(config, spec) for spec in OPTIONS}
    return Settings(**values)
