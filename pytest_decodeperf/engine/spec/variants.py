"""A variant: one point of the matrix (model x cache x stream mode x batch x length x stop)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ...errors import DecodePerfError, check_choice, check_positive
from ..decode.caches import CACHES
from ..decode.custom import DECODERS
from ..decode.stream_modes import HF_MODES, SPECULATIVE_MODES, STOP_POLICIES, check_stream_mode
from .attention import check_attn, device_refusal
from .models import DTYPES, model_label
from .workload import DEFAULT_PROMPT_LEN, PROMPTS, STOPS

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile(value: object) -> bool | str:
    """False, True, or a torch.compile mode name."""
    if isinstance(value, bool) or value in COMPILE_MODES:
        return value
    raise DecodePerfError(f"compile must be True, False or one of {', '.join(COMPILE_MODES)}; got {value!r}")


# Every field's check, by the name the marker, the options and the record give it: the one place a value of an
# axis is judged (the marker checks each keyword's values with these, a Variant its fields).
FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "cache": lambda v: check_choice("cache type", v, CACHES),
    "stream": check_stream_mode,
    "batch_size": lambda v: check_positive("batch_size", v),
    "new_tokens": lambda v: check_positive("new_tokens", v),
    "stop": lambda v: check_choice("stop", v, STOPS),
    "compile": check_compile,
    "dtype": lambda v: check_choice("dtype", v, DTYPES),
    "prompt_len": lambda v: check_positive("prompt_len", v),
    "prompts": lambda v: check_choice("prompts", v, PROMPTS),
    "tp": lambda v: check_positive("tp", v),
    "attn": check_attn,
    "draft": lambda v: v if v is None or (isinstance(v, str) and v) else _bad("draft", v),
    "lookup_tokens": lambda v: check_positive("lookup_tokens", v),
    "concurrency": lambda v: v if v is None else check_positive("concurrency", v),
}
DEFAULT_LOOKUP = 4
SELF_DRAFT = "self"  # hf-assisted with the model as its own draft: every proposal kept, the most a draft saves


def _bad(what: str, value: object) -> None:
    raise DecodePerfError(f"{what} must be a model name or None, got {value!r}")


@dataclass(frozen=True)
class Variant:
    model: str
    cache: str = "dynamic"
    stream: str = "baseline"
    batch_size: int = 1
    new_tokens: int = 64
    stop: str = "eos"
    compile: bool | str = False  # True: torch.compile default mode; a str: that mode
    dtype: str = "float32"
    prompt_len: int = DEFAULT_PROMPT_LEN  # the longest row's prompt tokens
    prompts: str = "random"  # random, mixed (left padded, lengths spread) or text (the corpus, tokenized)
    tp: int = 1  # tensor-parallel ranks the model is sharded over (engine/parallel/tensor_parallel.py)
    attn: str | None = None  # the attention kernel (transformers' attn_implementation); None: the model's default
    draft: str | None = (
        None  # hf-assisted: the draft model (a zoo name, a checkpoint, or a draft_model fixture's label)
    )
    lookup_tokens: int = DEFAULT_LOOKUP  # hf-prompt-lookup: the most tokens one lookup proposes
    concurrency: int | None = None  # hf-serve: requests running at once (None: all of them; batch_size: the requests)

    @property
    def id(self) -> str:
        """Readable id, e.g. ``tiny-gpt2-static-pipelined-b8``; ``-p512`` / ``-p64mixed`` off the default prompt,
        ``-eager`` for a kernel named (the model's default kernel adds nothing: ids stay as they were)."""
        parts = [model_label(self.model), self.cache, self.stream, f"b{self.batch_size}"]
        if self.prompt_len != DEFAULT_PROMPT_LEN or self.prompts != "random":
            parts.append(f"p{self.prompt_len}" + ("" if self.prompts == "random" else self.prompts))
        if self.compile:
            parts.append("compiled" if self.compile is True else f"compiled-{self.compile}")
        if self.dtype != "float32":
            parts.append(self.dtype)
        if self.tp > 1:
            parts.append(f"tp{self.tp}")
        if self.attn is not None:
            parts.append(self.attn)
        if self.stream == "hf-assisted" and self.draft is not None:
            parts.append(f"draft-{model_label(self.draft)}")
        if self.stream == "hf-prompt-lookup" and self.lookup_tokens != DEFAULT_LOOKUP:
            parts.append(f"lookup{self.lookup_tokens}")
        if self.stream == "hf-serve" and self.concurrency is not None:
            parts.append(f"c{self.concurrency}")
        return "-".join(parts)

    @property
    def config_key(self) -> tuple[Any, ...]:
        """Everything but the stream mode: variants with one key must give the same tokens."""
        return (
            self.model,
            self.cache,
            self.batch_size,
            self.new_tokens,
            self.stop,
            self.compile,
            self.dtype,
            self.prompt_len,
            self.prompts,
            self.tp,  # a sum over ranks rounds differently: tp=2's tokens are held to tp=2's baseline
            self.attn,  # another kernel sums in another order: its tokens are held to its own baseline
        )

    def baseline(self) -> Variant:
        return replace(self, stream="baseline")

    def paired(self) -> Variant:
        """What its rounds alternate with ("vs baseline"): plain generate() for a speculative mode (what speculation
        saves), else the loop's baseline."""
        if self.stream == "hf-serve":  # continuous against static batching: generate() on the whole batch at once
            return replace(self, stream="hf-generate", cache="dynamic", concurrency=None)
        stream = "hf-generate" if self.stream in SPECULATIVE_MODES else "baseline"
        return replace(self, stream=stream, draft=None, lookup_tokens=DEFAULT_LOOKUP)

    @property
    def requests_at_once(self) -> int:
        """hf-serve: requests running at once."""
        return min(self.concurrency or self.batch_size, self.batch_size)

    @property
    def is_hf(self) -> bool:
        return self.stream in HF_MODES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self, device: torch.device | str | None = None) -> Variant:
        """Raise DecodePerfError naming the first bad field or combination; return self when all are fine."""
        for name, check in FIELD_CHECKS.items():
            check(getattr(self, name))
        why = self.refusal()
        if why is not None:
            raise DecodePerfError(why)
        if device is not None:
            dev = torch.device(device)
            if self.stream in STOP_POLICIES and not STOP_POLICIES[self.stream].supports(dev):
                raise DecodePerfError(
                    f"stream mode {self.stream!r} cannot run on device {dev.type!r}; it runs on cpu and cuda"
                )
            if (why := device_refusal(self.attn, dev.type)) is not None:
                raise DecodePerfError(f"{self.id}: {why}")
            if self.stream == "hf-deferred" and dev.type != "cuda":
                raise DecodePerfError(
                    "stream mode 'hf-deferred' needs CUDA: transformers' DeferredStopCheck records "
                    f"torch.Event on the device, which {dev.type!r} does not support"
                )
        return self

    def refusal(self) -> str | None:
        """Why this combination of fields cannot run anywhere (one line), or None: collection marks such an item
        skipped with it, a run refuses it."""
        if self.compile and self.stream in DECODERS:
            return (
                f"stream mode {self.stream!r} is a decoder of yours: compile inside it (compile= applies to the "
                "plugin's loop; the forward hooks that time your steps cannot see into a compiled model)"
            )
        if (self.stream == "hf-serve") != (self.cache == "paged"):
            return (
                f"{self.id}: continuous batching (stream 'hf-serve') runs on transformers' paged cache and only it "
                "does: cache='paged' goes with stream='hf-serve'"
            )
        if self.stream == "hf-serve" and self.compile:
            return f"{self.id}: continuous batching is measured eager here (compile= would label an eager figure)"
        if self.tp > 1 and (self.stream == "hf-serve" or self.stream in SPECULATIVE_MODES):
            return f"{self.id}: {self.stream} is not run tensor-parallel yet (tp=1)"
        if self.stream not in SPECULATIVE_MODES:
            return None
        if self.batch_size != 1:
            return (
                f"{self.id}: transformers' speculative generate() runs one row at a time (batch_size=1); got "
                f"{self.batch_size}"
            )
        if self.cache == "none":
            return f"{self.id}: speculative decoding needs a cache to crop what it rejects (cache=none)"
        if self.stream == "hf-assisted" and not self.draft:
            return f"{self.id}: 'hf-assisted' needs a draft model: draft=... in the marker"
        return None


def matrix(
    models: Sequence[str],
    caches: Sequence[str],
    streams: Sequence[str],
    batch_sizes: Sequence[int],
    new_tokens: Sequence[int],
    stops: Sequence[str] = ("eos",),
    compiles: Sequence[bool | str] = (False,),
    dtypes: Sequence[str] = ("float32",),
    prompts: Sequence[tuple[int, str]] = ((DEFAULT_PROMPT_LEN, "random"),),
    tps: Sequence[int] = (1,),
    draft: str | None = None,
    lookup_tokens: int = DEFAULT_LOOKUP,
    concurrency: Sequence[int | None] = (None,),
    attns: Sequence[str | None] = (None,),
) -> list[Variant]:
    """Every combination, each axis's values checked (``FIELD_CHECKS``), in one order: model, dtype, attn, tp, cache,
    compile, batch, prompt, length, stop, then stream mode (the modes of one configuration stand together, as
    given). ``prompts``: (prompt_len, kind) points (``marker.prompt_axis``). ``draft`` and ``lookup_tokens`` go to
    the speculative modes' variants only (the others' ids and keys stay as they were)."""
    axes: list[tuple[str, Sequence[Any]]] = [
        ("dtype", dtypes),
        ("attn", attns),
        ("tp", tps),
        ("cache", caches),
        ("compile", compiles),
        ("batch_size", batch_sizes),
        ("new_tokens", new_tokens),
        ("stop", stops),
        ("stream", streams),
    ]
    for name, values in [("models", models), *axes, ("prompt_lens", prompts)]:
        if not values:
            raise DecodePerfError(f"decode_perf {name} is empty")
    for name, values in axes:
        for value in values:
            FIELD_CHECKS[name](value)
    FIELD_CHECKS["draft"](draft)
    FIELD_CHECKS["lookup_tokens"](lookup_tokens)
    for value in concurrency:
        FIELD_CHECKS["concurrency"](value)

    variants: list[Variant] = []
    for (m, dt, a), (t, c, co, b, (p, k), n, st, s) in itertools.product(
        itertools.product(models, dtypes, attns),
        itertools.product(tps, caches, compiles, batch_sizes, prompts, new_tokens, stops, streams),
    ):
        for cc in concurrency if s == "hf-serve" else (None,):  # concurrency varies hf-serve's variants only
            variants.append(
                Variant(
                    *(m, c, s, b, n, st, co, dt, p, k, t, a),
                    draft=draft if s == "hf-assisted" else None,
                    lookup_tokens=lookup_tokens if s == "hf-prompt-lookup" else DEFAULT_LOOKUP,
                    concurrency=cc,
                )
            )
    return variants
