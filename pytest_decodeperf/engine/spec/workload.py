"""Prompts and the stop workload: make random-init models really stop, at known steps.

A random model almost never emits its configured EOS, so a stop check would never fire and the
off-by-one of a lagged policy would go untested. ``stop="eos"`` decodes once without stops, then
for each row picks the token that row really emits at a target step (targets spread over the
middle half of the run) and uses the set of those tokens as EOS. Rows then finish at different
steps, each known in advance from the reference run (``expected_lengths``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ...errors import DecodePerfError, check_choice, check_positive
from ..decode.masks import left_pad
from ..decode.request import Request, row_lengths
from ..parity.reference import greedy_reference
from .models import pad_token_id, vocab_size

STOPS = ("eos", "none")
# random: every row prompt_len random ids; mixed: random ids, rows of different lengths, left padded;
# text: lines of the shipped corpus through the checkpoint's tokenizer, cut at prompt_len, left padded.
PROMPTS = ("random", "mixed", "text")
LENGTH_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
DEFAULT_PROMPT_LEN = 4
CUDA_PROMPT_LENS = (128, 512)


def default_prompt_lens(device: torch.device | str) -> tuple[int, ...]:
    """Prompt lengths a run uses when none are given: tiny on CPU, realistic on CUDA (prefill matters there)."""
    return CUDA_PROMPT_LENS if torch.device(device).type == "cuda" else (DEFAULT_PROMPT_LEN,)


@dataclass(frozen=True, kw_only=True)
class Workload(Request):
    """The inputs of one variant (a ``Request``: prompts [B, P], stop tokens, pad, length, padding mask), and how
    its stops were made: ``stop`` (eos: real EOS tokens at known steps; none) and each row's expected length."""

    stop: str = "eos"
    expected_lengths: tuple[int, ...] = ()

    @property
    def prompt_lengths(self) -> tuple[int, ...]:
        """Real (unpadded) prompt length of each row."""
        if self.attention_mask is None:
            return (int(self.prompts.shape[1]),) * self.batch_size
        return tuple(int(n) for n in self.attention_mask.sum(dim=1).tolist())

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


def mixed_lengths(batch_size: int, prompt_len: int) -> list[int]:
    """Row lengths of a mixed batch: the first row ``prompt_len``, the last a quarter of it, evenly between."""
    if batch_size == 1:
        return [prompt_len]
    low = max(1, (prompt_len + 3) // 4)
    return [prompt_len - round(r * (prompt_len - low) / (batch_size - 1)) for r in range(batch_size)]


def mixed_prompts(
    model: PreTrainedModel, batch_size: int, prompt_len: int, seed: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random prompts of different lengths, left padded: (ids [B, P], mask [B, P])."""
    ids = make_prompts(model, batch_size, prompt_len, seed)
    rows = [ids[r, prompt_len - n :].tolist() for r, n in enumerate(mixed_lengths(batch_size, prompt_len))]
    return left_pad(rows, pad_id)


CORPUS = Path(__file__).with_name("data") / "corpus.txt"


def corpus_lines() -> list[str]:
    """The small English corpus shipped with the package, one sentence a line."""
    return [line.strip() for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def encode(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    """Token ids of ``text``: a transformers tokenizer (``encode`` gives ids) or a ``tokenizers.Tokenizer``;
    ``special``: with the tokens the tokenizer adds around a text (BOS, EOS)."""
    out = tokenizer.encode(text, add_special_tokens=special)
    return [int(i) for i in (out.ids if hasattr(out, "ids") else out)]


def leading_specials(tokenizer: Any, text: str) -> list[int]:
    """What the tokenizer puts before a text (a BOS): a prompt starts with it once, not before every line."""
    full, plain = encode(tokenizer, text, special=True), encode(tokenizer, text)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def text_prompts(
    model: PreTrainedModel, tokenizer: Any, batch_size: int, prompt_len: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real text as prompts: row r is corpus lines from line 3r on, tokenized (the tokenizer's BOS once at
    the start, no special token between lines) and cut at its target length (``mixed_lengths``: the first
    row prompt_len tokens, the last a quarter of it), left padded."""
    name = type(model).__name__
    if tokenizer is None:
        raise DecodePerfError(
            f"{name}: prompts='text' needs a tokenizer beside the checkpoint (tokenizer.json or "
            "tokenizer_config.json in its directory); use prompts='random' or 'mixed' for a model without one"
        )
    lines = corpus_lines()
    vocab = vocab_size(model)
    rows: list[list[int]] = []
    start = leading_specials(tokenizer, lines[0])
    for row, target in enumerate(mixed_lengths(batch_size, prompt_len)):
        ids: list[int] = list(start)
        for i in range(len(lines) * max(1, target)):  # bounded: every line adds a token, or the check below fires
            ids += encode(tokenizer, lines[(3 * row + i) % len(lines)] + "\n")
            if len(ids) >= target:
                break
        if len(ids) < target:
            raise DecodePerfError(f"{name}: the tokenizer turns the corpus into no tokens; is it empty or broken?")
        rows.append(ids[:target])
    worst = max(max(row) for row in rows)
    if worst >= vocab:
        raise DecodePerfError(
            f"{name}: the tokenizer gives id {worst}, but the model's vocabulary holds {vocab} ids: the tokenizer "
            "beside the checkpoint is not the one it was trained with"
        )
    return left_pad(rows, pad_id)


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


def make_workload(
    model: PreTrainedModel,
    batch_size: int,
    max_new_tokens: int,
    stop: str = "eos",
    prompt_len: int = DEFAULT_PROMPT_LEN,
    seed: int = 0,
    prompts: str = "random",
    tokenizer: Any = None,
) -> Workload:
    """Prompts on the model's device, and stop tokens chosen so rows finish at known steps.

    ``prompts``: ``random`` ([B, prompt_len] seeded ids), ``mixed`` (seeded ids, rows of different
    lengths up to prompt_len, left padded, with an attention mask) or ``text`` (the shipped corpus
    through ``tokenizer``, rows of lengths spread as in ``mixed``, left padded).
    """
    check_positive("batch size", batch_size)
    check_positive("new tokens", max_new_tokens)
    check_positive("prompt length", prompt_len)
    check_choice("stop workload", stop, STOPS)
    check_choice("prompts", prompts, PROMPTS)
    device = next(model.parameters()).device
    pad_id = pad_token_id(model)
    check_inputs(model, prompt_len, max_new_tokens, pad_id)
    mask: torch.Tensor | None = None
    if prompts == "random":
        ids = make_prompts(model, batch_size, prompt_len, seed).to(device)
    else:
        if prompts == "mixed":
            ids, mask = mixed_prompts(model, batch_size, prompt_len, seed, pad_id)
        else:
            ids, mask = text_prompts(model, tokenizer, batch_size, prompt_len, pad_id)
        ids, mask = ids.to(device), mask.to(device)
    workload = _stops(model, ids, mask, pad_id, max_new_tokens, stop)
    return workload


def _stops(
    model: PreTrainedModel,
    prompts: torch.Tensor,
    mask: torch.Tensor | None,
    pad_id: int,
    max_new_tokens: int,
    stop: str,
) -> Workload:
    device = prompts.device
    batch_size = int(prompts.shape[0])
    no_eos = torch.empty(0, dtype=torch.long, device=device)
    if stop == "none":
        return Workload(
            prompts=prompts,
            eos_ids=no_eos,
            pad_id=pad_id,
            max_new_tokens=max_new_tokens,
            attention_mask=mask,
            stop=stop,
            expected_lengths=(max_new_tokens,) * batch_size,
        )
    generated, _ = greedy_reference(model, Request(prompts, no_eos, pad_id, max_new_tokens, mask), stops=False)
    check_not_degenerate(generated, [], type(model).__name__)
    eos = choose_eos(generated, pad_id)
    return Workload(
        prompts=prompts,
        eos_ids=torch.tensor(eos, dtype=torch.long, device=device),
        pad_id=pad_id,
        max_new_tokens=max_new_tokens,
        stop=stop,
        expected_lengths=row_lengths(generated, eos),
        attention_mask=mask,
    )
