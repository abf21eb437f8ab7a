"""The ``decode_perf`` marker: its signature, validation, and the variant matrix it expands to."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import DecodePerfError, check_choice

if TYPE_CHECKING:
    from .engine.spec.variants import Variant


def decode_perf(
    models: str | Sequence[str] | None = None,
    cache: str | Sequence[str] = ("dynamic",),
    stream: str | Sequence[str] = ("baseline", "pipelined"),
    batch_size: int | Sequence[int] = (1,),
    new_tokens: int | Sequence[int] = 64,
    stop: str | Sequence[str] = "eos",
    parity: bool = True,
    compile: bool | str | Sequence[bool | str] = False,
    max_syncs_per_step: int | None = None,
    prompt_lens: int | str | Sequence[int | str] | None = None,
    prompts: str = "random",
    dtype: str | Sequence[str] = "float32",
    tp: int | Sequence[int] = 1,
    attn: str | Sequence[str | None] | None = None,
    draft: str | None = None,
    lookup_tokens: int = 4,
    concurrency: int | Sequence[int | None] | None = None,
) -> None:
    """Signature of the marker (never called): each keyword takes one value or a sequence."""


SIGNATURE = inspect.signature(decode_perf)
# What each keyword means: the one text behind ``pytest --markers`` and the marker's reference page
# (scripts/gen_reference.py); the values each takes come from the engine's registries.
KEYWORDS: dict[str, str] = {
    "models": "zoo model names or saved checkpoint directories (None: the device's default model; any label when "
    "decode_model is overridden)",
    "cache": "the KV cache of the decode loop",
    "stream": "the stream mode: how and when the host reads the stop flag, or transformers' generate()",
    "batch_size": "rows decoded together",
    "new_tokens": "the most new tokens per row",
    "stop": "eos: rows stop at different, known steps (real EOS tokens); none: every row runs to new_tokens",
    "parity": "hold every variant's tokens to transformers' generate() (stream modes of one cache: bit for bit)",
    "compile": "torch.compile the model (True, or a mode); the compile round is kept apart",
    "max_syncs_per_step": "hidden blocking device reads allowed per decode step (None: 0 for the decode loop's "
    "modes, not gated for generate()'s)",
    "prompt_lens": "prompt tokens per row (None: the device's default, 4 on CPU, 128 and 512 on CUDA); 'mixed': "
    "rows of different lengths up to the largest, left padded with an attention mask",
    "prompts": "random (seeded ids), mixed (left-padded rows of different lengths) or text (the shipped corpus "
    "through the tokenizer beside a checkpoint)",
    "dtype": "the weights' dtype",
    "tp": "tensor-parallel ranks the model is sharded over (tp=2: ids gain -tp2; the plugin starts the ranks, or "
    "runs under torchrun or srun)",
    "attn": "the attention kernel, transformers' attn_implementation: sdpa, eager or flex_attention (ids gain -eager; "
    "None: the model's default, ids unchanged); one the model or the device cannot run is refused at collection",
    "draft": "hf-assisted's draft model: a zoo name, a checkpoint, the label your draft_model fixture serves, or "
    "'self' (the model as its own draft: every proposal kept) (ids gain -draft-<label>)",
    "lookup_tokens": "hf-prompt-lookup: the most tokens one n-gram lookup proposes (ids gain -lookupN off the default)",
    "concurrency": "hf-serve: requests running at once, of batch_size requests (None: all at once; ids gain -cN)",
}
MARKER_DOC = (
    "decode_perf("
    + ", ".join(f"{name}={param.default!r}" for name, param in SIGNATURE.parameters.items())
    + "): measure token generation for each combination of the given values and check every variant's tokens "
    "against transformers' generate(). "
    + "; ".join(f"{name}: {text}" for name, text in KEYWORDS.items())
    + ". Runs only with --decodeperf."
)


def _seq(value: Any) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes, int, bool)) or value is None:
        return (value,)
    if isinstance(value, Iterable):
        return tuple(value)
    return (value,)


PromptLen = int | str  # a length, or "mixed"


def check_prompt_len(value: object) -> PromptLen:
    """A prompt length (an integer >= 1) or 'mixed'."""
    if value == "mixed":
        return "mixed"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DecodePerfError(f"prompt length must be an integer >= 1 or 'mixed', got {value!r}")
    return value


def prompt_axis(lens: Sequence[PromptLen], prompts: str, default: Sequence[int]) -> list[tuple[int, str]]:
    """(prompt_len, prompts kind) per entry: 'mixed' stands for the longest length given (else the
    default's), left padded; with prompts='text' every length is text, naturally of mixed lengths."""
    ints = [n for n in lens if isinstance(n, int)]
    longest = max(ints) if ints else max(default)
    out: list[tuple[int, str]] = []
    for n in lens:
        if prompts == "text":
            out.append((longest if n == "mixed" else int(n), "text"))
        elif n == "mixed" or prompts == "mixed":
            out.append((longest if n == "mixed" else int(n), "mixed"))
        else:
            out.append((int(n), "random"))
    return list(dict.fromkeys(out))


def parse_marker(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    default_model: str,
    custom_model: bool,
    default_prompt_lens: Sequence[int] = (4,),
    prompt_lens: Sequence[PromptLen] | None = None,
    dtype: str | None = None,
    tp: Sequence[int] | None = None,
    attn: Sequence[str] | None = None,
) -> tuple[list[Variant], bool]:
    """Validate the marker's arguments; return its variants and whether parity is checked.

    ``custom_model``: the ``decode_model`` fixture is overridden, so model names are the user's labels.
    ``default_prompt_lens``: the device's, for a marker without ``prompt_lens``; ``prompt_lens``: the
    ``--decodeperf-prompt-lens`` option, which overrides the marker's; ``dtype``: ``--decodeperf-dtype``, likewise;
    ``tp``: ``--decodeperf-tp``, likewise; ``attn``: ``--decodeperf-attn``, likewise.
    """
    # The engine's registries say which names are valid: imported only for a marked test.
    from .engine.spec.models import check_model_name
    from .engine.spec.variants import matrix
    from .engine.spec.workload import PROMPTS

    if args:
        raise DecodePerfError(f"decode_perf takes keyword arguments only, got positional {args!r}")
    unknown = sorted(set(kwargs) - set(SIGNATURE.parameters))
    if unknown:
        raise DecodePerfError(
            f"unknown decode_perf keyword(s) {', '.join(map(repr, unknown))}; allowed: "
            + ", ".join(SIGNATURE.parameters)
        )
    bound = SIGNATURE.bind(**kwargs)
    bound.apply_defaults()
    a = bound.arguments
    models = _seq(a["models"]) if a["models"] is not None else (default_model,)
    for model in models:
        if not isinstance(model, str) or not model:
            raise DecodePerfError(f"decode_perf models must be names, got {model!r}")
        if not custom_model:
            check_model_name(model)
    budget = a["max_syncs_per_step"]
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise DecodePerfError(f"decode_perf max_syncs_per_step must be None or an integer >= 0, got {budget!r}")
    kind = check_choice("prompts", a["prompts"], PROMPTS)
    if kind == "text" and not custom_model:
        from .engine.spec.models import is_checkpoint

        zoo = [m for m in models if not is_checkpoint(m)]
        if zoo:
            raise DecodePerfError(
                f"decode_perf prompts='text' needs a checkpoint with its tokenizer; {zoo[0]!r} is a zoo model "
                "(random weights, no tokenizer): name a checkpoint directory in models= or --decodeperf-model-path"
            )
    lens = prompt_lens if prompt_lens is not None else a["prompt_lens"]
    lens_given = _seq(lens) if lens is not None else tuple(default_prompt_lens)
    prompt_points = prompt_axis(tuple(check_prompt_len(n) for n in lens_given), kind, default_prompt_lens)
    if not isinstance(a["parity"], bool):
        raise DecodePerfError(f"decode_perf parity must be True or False, got {a['parity']!r}")
    variants = matrix(
        models,
        _seq(a["cache"]),
        _seq(a["stream"]),
        _seq(a["batch_size"]),
        _seq(a["new_tokens"]),
        _seq(a["stop"]),
        _seq(a["compile"]),
        _seq(dtype if dtype is not None else a["dtype"]),
        prompt_points,
        tuple(dict.fromkeys(_seq(tp if tp is not None else a["tp"]))),
        attns=tuple(dict.fromkeys(_seq(attn if attn is not None else a["attn"]))),
        draft=a["draft"],
        lookup_tokens=a["lookup_tokens"],
        concurrency=_seq(a["concurrency"]),
    )
    return variants, a["parity"]


def variant_id(variant: Variant, vary_length: bool, vary_stop: bool) -> str:
    """The test id: ``tiny-gpt2-static-pipelined-b8``, with length/stop only when they vary."""
    parts = [variant.id]
    if vary_length:
        parts.append(f"n{variant.new_tokens}")
    if vary_stop:
        parts.append(f"stop-{variant.stop}")
    return "-".join(parts)
