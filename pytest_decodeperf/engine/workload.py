"""Prompts and the stop workload: make random-init models really stop, at known steps.

A random model almost never emits its configured EOS, so a stop check would never fire and the
off-by-one of a lagged policy would go untested. ``stop="eos"`` decodes once without stops, then
for each row picks the token that row really emits at a target step (targets spread over the
middle half of the run) and uses the set of those tokens as EOS. Rows then finish at different
steps, each known in advance from the reference run (``expected_lengths``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..errors import DecodePerfError, check_choice, check_positive
from .caches import CacheSlot, get_cache
from .loop import generate
from .models import pad_token_id, vocab_size
from .stream_modes import get_stop_policy

STOPS = ("eos", "none")
LENGTH_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
DEFAULT_PROMPT_LEN = 4


@dataclass(frozen=True)
class Workload:
    """The inputs of one variant: prompts [B, P], stop tokens, pad, and the expected row lengths."""

    prompts: torch.Tensor
    eos_ids: torch.Tensor
    pad_id: int
    max_new_tokens: int
    stop: str
    expected_lengths: tuple[int, ...]

    @property
    def batch_size(self) -> int:
        return int(self.prompts.shape[0])

    @property
    def expected_steps(self) -> int:
        """Steps a stopping policy keeps: until the last row finishes."""
        return max(self.expected_lengths)


def make_prompts(model: PreTrainedModel, batch_size: int, prompt_len: int, seed: int) -> torch.Tensor:
    """Seeded random prompts [B, P], distinct per row so rows decode (and stop) differently."""
    gen = torch.Generator().manual_seed(seed)
    # Keep ids 0..15 out of prompts: tiny configs put bos/eos/pad there.
    low = min(16, vocab_size(model) - 1)
    return torch.randint(low, vocab_size(model), (batch_size, prompt_len), generator=gen)


def reference_tokens(model: PreTrainedModel, prompts: torch.Tensor, max_new_tokens: int, pad_id: int) -> torch.Tensor:
    """Greedy tokens [B, N] with no stop at all (dynamic cache; generate() for a model the loop cannot drive)."""
    from .reference import loop_refusal, model_eos_cleared

    if loop_refusal(model) is not None:
        with torch.inference_mode(), model_eos_cleared(model):
            sequences: torch.Tensor = model.generate(  # type: ignore[operator]
                prompts,
                attention_mask=torch.ones_like(prompts),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
        return sequences[:, prompts.shape[1] :].cpu()
    slot = CacheSlot(get_cache("dynamic"), model, prompts.shape[0], prompts.shape[1] + max_new_tokens)
    no_eos = torch.empty(0, dtype=torch.long, device=prompts.device)
    with torch.inference_mode():
        out = generate(model, prompts, max_new_tokens, slot, get_stop_policy("baseline"), no_eos, pad_id)
    return out.generated.cpu()


def check_inputs(model: PreTrainedModel, prompt_len: int, max_new_tokens: int, pad_id: int) -> None:
    """Ids and lengths the model can take, or one line saying which and how to fix it."""
    vocab = vocab_size(model)
    name = type(model).__name__
    if not 0 <= pad_id < vocab:
        raise DecodePerfError(
            f"{name}: pad id {pad_id} (the config's pad, else its eos) lies outside the vocabulary of {vocab}; "
            "set pad_token_id/eos_token_id in the config to ids below vocab_size"
        )
    config = model.config
    limit = next((v for a in LENGTH_LIMITS if isinstance(v := getattr(config, a, None), int)), None)
    if limit is not None and prompt_len + max_new_tokens > limit:
        raise DecodePerfError(
            f"{name}: prompt {prompt_len} + new tokens {max_new_tokens} = {prompt_len + max_new_tokens} positions, "
            f"but the model takes at most {limit}; lower new_tokens or raise the config's position limit"
        )


def check_not_degenerate(generated: torch.Tensor, eos_ids: list[int] | torch.Tensor, label: str) -> None:
    """A reference the harness cannot judge with: rows that stop at once, or one token repeated."""
    width = int(generated.shape[1])
    fix = "seed the model, untie its embeddings (tie_word_embeddings=False) or change initializer_range (0.3 works)"
    if len(eos_ids) and width > 2 and max(row_lengths(generated, eos_ids)) <= 1:
        raise DecodePerfError(f"{label}: every row stops at its first step in the reference: nothing to measure; {fix}")
    if width >= 4:
        collapsed = [r for r in range(int(generated.shape[0])) if bool((generated[r] == generated[r, 0]).all())]
        if collapsed:
            raise DecodePerfError(
                f"{label}: the reference repeats one token for the whole run in row(s) {collapsed[:5]} "
                f"(token {int(generated[collapsed[0], 0])}): a collapsed model makes every mode agree trivially; {fix}"
            )


def target_steps(batch_size: int, max_new_tokens: int) -> list[int]:
    """Per-row target stop steps, evenly spread over the middle half of the run."""
    lo, hi = max_new_tokens // 4, max(max_new_tokens // 4, (3 * max_new_tokens) // 4 - 1)
    if batch_size == 1:
        return [hi]
    return [lo + round(r * (hi - lo) / (batch_size - 1)) for r in range(batch_size)]


def choose_eos(generated: torch.Tensor, pad_id: int) -> list[int]:
    """One EOS token per row: what the row emits at (or after) its target step, never the pad."""
    batch, n = generated.shape
    chosen: set[int] = set()
    for row, target in enumerate(target_steps(batch, n)):
        for tok in generated[row, target:].tolist() + generated[row, :target].tolist()[::-1]:
            if tok != pad_id:
                chosen.add(int(tok))
                break
    return sorted(chosen)


def row_lengths(generated: torch.Tensor, eos_ids: list[int] | torch.Tensor) -> tuple[int, ...]:
    """Per-row generated length up to and including the first EOS (full width if none)."""
    eos = torch.as_tensor(eos_ids, dtype=torch.long).to(generated.device)
    is_eos = torch.isin(generated, eos)
    width = int(generated.shape[1])
    first = torch.where(
        is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, torch.full_like(is_eos[:, 0], width, dtype=torch.long)
    )
    return tuple(int(x) for x in first.tolist())


def make_workload(
    model: PreTrainedModel,
    batch_size: int,
    max_new_tokens: int,
    stop: str = "eos",
    prompt_len: int = DEFAULT_PROMPT_LEN,
    seed: int = 0,
) -> Workload:
    """Prompts on the model's device, and stop tokens chosen so rows finish at known steps."""
    check_positive("batch size", batch_size)
    check_positive("new tokens", max_new_tokens)
    check_positive("prompt length", prompt_len)
    check_choice("stop workload", stop, STOPS)
    device = next(model.parameters()).device
    pad_id = pad_token_id(model)
    check_inputs(model, prompt_len, max_new_tokens, pad_id)
    prompts = make_prompts(model, batch_size, prompt_len, seed).to(device)
    if stop == "none":
        return Workload(
            prompts,
            torch.empty(0, dtype=torch.long, device=device),
            pad_id,
            max_new_tokens,
            stop,
            (max_new_tokens,) * batch_size,
        )
    generated = reference_tokens(model, prompts, max_new_tokens, pad_id)
    check_not_degenerate(generated, [], type(model).__name__)
    eos = choose_eos(generated, pad_id)
    return Workload(
        prompts=prompts,
        eos_ids=torch.tensor(eos, dtype=torch.long, device=device),
        pad_id=pad_id,
        max_new_tokens=max_new_tokens,
        stop=stop,
        expected_lengths=row_lengths(generated, eos),
    )
