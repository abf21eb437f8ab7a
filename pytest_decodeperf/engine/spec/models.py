"""The model zoo: named decoder models built offline from configs, with seeded random init.

No weights are downloaded. Random init with transformers' default ``initializer_range=0.02``
makes greedy decoding collapse to one repeated token; 0.3 gives varied output, which the stop
workload needs (it picks real emitted tokens as EOS). The compute per token is the same as a
trained model of the same shape, which is what a performance test measures.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from ...errors import DecodePerfError, check_choice

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# Random-init models need a wide init so greedy output varies (see module docstring).
INIT_RANGE = 0.3
# The tiny zoo models' token ids (bos 0, eos = pad 1) and init, one place for every config that builds one.
ZOO_IDS_AND_INIT: dict[str, Any] = {
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
    "initializer_range": INIT_RANGE,
}


@dataclass(frozen=True)
class ModelSpec:
    """A named model: how to build it and what it is for."""

    name: str
    description: str
    build: Callable[[], PreTrainedModel]


def _tiny_gpt2() -> PreTrainedModel:
    config = GPT2Config(
        vocab_size=2048,
        n_positions=1024,
        n_embd=128,
        n_layer=4,
        n_head=4,
        **ZOO_IDS_AND_INIT,
    )
    return GPT2LMHeadModel(config)


def _gpt2() -> PreTrainedModel:
    # GPT-2 small (124M), the article's model; pad == eos == bos as in the hub config.
    config = GPT2Config(initializer_range=INIT_RANGE, pad_token_id=50256)
    return GPT2LMHeadModel(config)


def _llama(vocab: int, width: int, mlp: int, layers: int, heads: int, kv_heads: int, positions: int) -> PreTrainedModel:
    """A Llama with grouped-query attention (``kv_heads`` < ``heads``), the zoo's ids and init."""
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=positions,
        **ZOO_IDS_AND_INIT,
    )
    return LlamaForCausalLM(config)


def _tiny_llama_gqa() -> PreTrainedModel:
    # Grouped-query attention: 8 query heads share 2 key/value heads, so the KV cache is
    # 4x smaller than multi-head attention of the same width.
    return _llama(vocab=2048, width=128, mlp=256, layers=4, heads=8, kv_heads=2, positions=1024)


def _llama_gqa_1b() -> PreTrainedModel:
    # A Llama-3.2-1B-shaped model with GQA (32 query / 8 KV heads): for GPUs.
    return _llama(vocab=32000, width=2048, mlp=8192, layers=16, heads=32, kv_heads=8, positions=4096)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("tiny-gpt2", "GPT-2, 4 layers, 128 wide, 2k vocab: fast on CPU", _tiny_gpt2),
        ModelSpec("gpt2", "GPT-2 small (124M), the article's model", _gpt2),
        ModelSpec("tiny-llama-gqa", "Llama, 4 layers, 8 query / 2 KV heads (GQA)", _tiny_llama_gqa),
        ModelSpec("llama-gqa-1b", "Llama-3.2-1B-shaped, 32 query / 8 KV heads (GQA)", _llama_gqa_1b),
    )
}


def default_model_name(device: torch.device | str) -> str:
    """The model a run uses when none is named: the article's GPT-2 on CUDA, a tiny one on CPU."""
    return "gpt2" if torch.device(device).type == "cuda" else "tiny-gpt2"


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES[check_choice("dtype", dtype, DTYPES)]


def is_checkpoint(name: str) -> bool:
    """A model name that is a directory (a saved checkpoint), not a zoo name."""
    return name not in MODELS and Path(name).expanduser().is_dir()


def model_label(name: str) -> str:
    """How a model shows in ids and tables: a checkpoint directory by its name, anything else (a zoo name,
    a ``decode_model`` label such as ``org/model``) as it is."""
    if not is_checkpoint(name):
        return name
    return Path(name).expanduser().resolve().name or name


def check_model_name(name: str) -> str:
    """A zoo name or an existing checkpoint directory, else one line listing the zoo."""
    if is_checkpoint(name):
        return name
    if "/" in name or os.sep in name or name.startswith("."):
        raise DecodePerfError(f"model {name!r}: no such checkpoint directory (and not a zoo name: {', '.join(MODELS)})")
    return check_choice("model", name, MODELS)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def load_checkpoint(
    path: str, device: torch.device | str = "cpu", dtype: str | torch.dtype = "float32"
) -> PreTrainedModel:
    """A saved causal LM from ``path``: local files only (no hub), never ``trust_remote_code``."""
    from transformers import AutoModelForCausalLM

    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise DecodePerfError(f"checkpoint {str(directory)!r} has no config.json: save it with save_pretrained()")
    _check_device(torch.device(device))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False, dtype=resolve_dtype(dtype)
        )
    except Exception as exc:  # the loader's many failures (corrupt weights, a missing library): one line
        why = first_line(exc)
        raise DecodePerfError(f"checkpoint {str(directory)!r} does not load as a causal LM: {why}") from None
    cast(Any, model).to(device=torch.device(device))
    cast(Any, model).eval()
    return cast(PreTrainedModel, model)


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved beside a checkpoint (None when there is none); local files only."""
    directory = Path(path).expanduser()
    if not directory.is_dir() or not any((directory / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # as load_checkpoint: one line
        raise DecodePerfError(f"the tokenizer beside {str(directory)!r} does not load: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """An exception's first line (its type when it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_device(dev: torch.device) -> None:
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DecodePerfError("device 'cuda' asked for, but torch.cuda.is_available() is False")


def build_model(
    name: str,
    device: torch.device | str = "cpu",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
    attn: str | None = None,
) -> PreTrainedModel:
    """Build zoo model ``name`` with seeded random weights (or load the checkpoint directory ``name``),
    in eval mode, on ``device``; ``attn``: its attention kernel (None: the model's default; ``set_attn``)."""
    if is_checkpoint(name):
        return set_attn(load_checkpoint(name, device, dtype), attn, name)
    spec = MODELS[check_model_name(name)]
    torch_dtype = resolve_dtype(dtype)
    dev = torch.device(device)
    _check_device(dev)
    # Seed a private generator stream so building a model never disturbs the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = set_attn(spec.build(), attn, name)  # the same weights whatever the kernel
    # transformers types .to()/.eval() loosely; the model is the same object either way.
    cast(Any, model).to(device=dev, dtype=torch_dtype)
    cast(Any, model).eval()
    return model


def actual_attn(model: torch.nn.Module) -> str | None:
    """The kernel ``model`` runs attention with (its config's ``_attn_implementation``; None: not said)."""
    value = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return value if isinstance(value, str) else None


def set_attn(model: PreTrainedModel, attn: str | None, name: str) -> PreTrainedModel:
    """``model`` switched to attention kernel ``attn`` by transformers' ``set_attn_implementation`` (the checks
    ``from_pretrained(attn_implementation=)`` makes; None: left as built); what it cannot run is one line naming
    its class. A zoo model is built first, so its seeded weights are the same whatever the kernel."""
    if attn is None or actual_attn(model) == attn:
        return model
    try:
        model.set_attn_implementation(attn)
    except (ValueError, ImportError) as exc:  # transformers' refusal: the class does not support the kernel
        why = first_line(exc).split(". ")[0]  # its first sentence (it names the class): the rest asks for an issue
        if not why.startswith(type(model).__name__):
            why = f"{type(model).__name__} cannot run it: {why}"
        raise DecodePerfError(f"{name}: attn={attn!r}: {why} (transformers {transformers.__version__})") from None
    if actual_attn(model) != attn:  # transformers only warns when a class cannot switch
        raise DecodePerfError(
            f"{name}: attn={attn!r}: {type(model).__name__} does not dispatch attention through transformers' "
            "AttentionInterface, so its kernel cannot be chosen"
        )
    return model


def pad_token_id(model: PreTrainedModel) -> int:
    """The id finished rows are padded with: the config's pad, else its eos, else 0."""
    config = model.config
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(config, attr, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return 0


def vocab_size(model: PreTrainedModel) -> int:
    size = getattr(model.config, "vocab_size", None)
    if not isinstance(size, int):
        raise DecodePerfError(f"model config has no integer vocab_size: {type(model.config).__name__}")
    return size
