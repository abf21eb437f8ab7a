"""Tests for syncs.py: counting blocking reads on CPU, per decode step, attributed to file:line."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from transformers import (
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    StaticCache,
    masking_utils,
)

from pytest_decodeperf.engine.decode.caches import cache_keyword
from pytest_decodeperf.engine.decode.hidden_syncs import full_causal_mask, no_padding_check
from pytest_decodeperf.engine.measure.syncs import SyncCounter

torch.set_num_threads(1)
THIS = os.path.relpath(__file__)  # how the counter names a file outside site-packages
PAD, BOS, EOS = 0, 1, 2
STEPS = 8


def _line() -> int:
    """The caller's line number."""
    return sys._getframe(1).f_lineno


def _source_line(func: Callable[..., object], needle: str) -> str:
    """``transformers/<file>:<line>`` of the first line of ``func`` containing ``needle``."""
    lines, start = inspect.getsourcelines(func)
    offset = next(i for i, text in enumerate(lines) if needle in text)
    path = Path(inspect.getfile(func)).as_posix()
    return f"{path.split('site-packages/', 1)[1]}:{start + offset}"


PADDING_CHECK_SITE = _source_line(PreTrainedModel.warn_if_padding_and_no_attention_mask, "pad_token_id in input_ids")
PACKED_CHECK_SITE = _source_line(masking_utils.find_packed_sequence_indices, "== 0).all()")


# -- tiny models ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2() -> PreTrainedModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=1000, n_embd=64, n_layer=2, n_head=2, n_positions=128,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.3,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    torch.nn.Module.eval(model)  # dropout off
    return model


@pytest.fixture(scope="module")
def llama() -> PreTrainedModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.3,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    torch.nn.Module.eval(model)
    return model


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(3, 1000, (2, 5), generator=gen)  # [B, P], no pad/bos/eos inside


# -- the loop under test (mirrors pytest_decodeperf/decode.py) ----------------------------------------------


def greedy(
    model: PreTrainedModel,
    prompts: torch.Tensor,
    counter: SyncCounter,
    cache_kind: str = "dynamic",
    mask_4d: bool = False,
    stop_check: bool = False,
    extra_item: bool = False,
    max_new_tokens: int = STEPS,
) -> torch.Tensor:
    """Prefill then single-token steps; finished rows get pad; returns [B, P + steps]."""
    batch, prompt_len = prompts.shape
    total = prompt_len + max_new_tokens
    device = prompts.device
    seq = torch.full((batch, total), PAD, dtype=torch.long, device=device)  # [B, P + N]
    seq[:, :prompt_len] = prompts
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    pad = torch.tensor(PAD, dtype=torch.long, device=device)  # PAD-BUILD
    eos_ids = torch.tensor([EOS], dtype=torch.long, device=device)  # EOS-BUILD
    cache: DynamicCache | StaticCache | None
    if cache_kind == "dynamic":
        cache = DynamicCache(config=model.config)
    elif cache_kind == "static":
        cache = StaticCache(config=model.config, max_cache_len=total)
    else:
        cache = None
    length = prompt_len
    with torch.no_grad():
        for step in range(max_new_tokens):
            with counter.step(step):
                length = prompt_len + step
                if step == 0 or cache is None:
                    inputs = seq[:, :length]  # [B, T]
                else:
                    inputs = seq[:, length - 1 : length]  # [B, 1]
                kwargs: dict[str, Any] = {cache_keyword(model) or "past_key_values": cache}
                if mask_4d:
                    kwargs["attention_mask"] = full_causal_mask(batch, inputs.shape[1], torch.float32, device)
                out = model(inputs, use_cache=cache is not None, **kwargs)
                token = torch.argmax(out.logits[:, -1, :], dim=-1)  # [B]
                token = torch.where(finished, pad, token)
                seq[:, length] = token
                finished |= torch.isin(token, eos_ids)
                if extra_item:
                    _ = token[0].item()  # EXTRA-ITEM
                if stop_check:
                    flag = finished.all()
                    with counter.declared():
                        if flag:  # STOP-READ
                            break
    return seq[:, : length + 1]


def _count(model: PreTrainedModel, prompts: torch.Tensor, **kw: object) -> tuple[SyncCounter, torch.Tensor]:
    with SyncCounter("cpu") as counter:
        tokens = greedy(model, prompts, counter, **kw)  # type: ignore[arg-type]
    return counter, tokens


def _marker_line(marker: str) -> int:
    lines, start = inspect.getsourcelines(greedy)
    return start + next(i for i, text in enumerate(lines) if marker in text)


def _setup_sites() -> dict[str, int]:
    """The loop's two one-off ``torch.tensor(..., device=)`` builds (pageable H2D on CUDA), outside any step."""
    return {f"{THIS}:{_marker_line(m)} tensor(device=)": 1 for m in ("# PAD-BUILD", "# EOS-BUILD")}


# -- counting basics ---------------------------------------------------------------------------------------


def test_counting_basics_each_idiom_at_this_line() -> None:
    x = torch.tensor([3, 0, 5])
    s = torch.tensor(2)
    expected: list[tuple[str, int]] = []
    with SyncCounter() as counter:
        expected.append(("_local_scalar_dense", _line() + 1))
        s.item()
        expected.append(("_local_scalar_dense", _line() + 1))
        bool(s)
        expected.append(("_local_scalar_dense", _line() + 1))
        int(s)
        expected.append(("tolist", _line() + 1))
        x.tolist()
        expected.append(("nonzero", _line() + 1))
        torch.nonzero(x)
        expected.append(("equal", _line() + 1))
        torch.equal(x, x)
        expected.append(("_local_scalar_dense", _line() + 1))
        _ = 3 in x
        expected.append(("cpu", _line() + 1))
        x.cpu()
        expected.append(("to(cpu)", _line() + 1))
        x.to("cpu")
        expected.append(("tensor(device=)", _line() + 1))
        torch.tensor([4, 5], device="cpu")
    assert [(e.op, e.site) for e in counter.events] == [(op, f"{THIS}:{line}") for op, line in expected]
    assert all(not e.declared and e.step is None for e in counter.events)


def test_non_blocking_idioms_are_not_counted() -> None:
    x = torch.tensor([3, 0, 5])
    seq = torch.zeros(2, 4, dtype=torch.long)
    with SyncCounter() as counter:
        y = x + 1
        _ = x.all(), x.any(), x == 3, torch.where(x > 0, x, y), torch.isin(x, y), torch.argmax(x.float())
        seq[:, 1] = x[:2]  # copy_ between host tensors
        _ = x.to(torch.float), x.to(y.device), torch.tensor(5), torch.tensor([], device="cpu"), x.shape[0]
    assert counter.events == []


def test_device_copies_on_a_non_cpu_counter() -> None:
    """The device-decided path, exercised with meta tensors standing in for the compute device."""
    aten = torch.ops.aten
    counter = SyncCounter("meta")
    dev, host = torch.empty(3, device="meta"), torch.empty(3)
    assert counter._classify_aten(aten._to_copy.default, (dev,), {"device": torch.device("cpu")}) == ("_to_copy", "d2h")
    assert counter._classify_aten(aten._to_copy.default, (dev,), {"dtype": torch.float}) is None
    assert counter._classify_aten(aten.copy_.default, (host, dev), {}) == ("copy_", "d2h")
    assert counter._classify_aten(aten.copy_.default, (dev, host), {}) == ("copy_(h2d)", "h2d")
    assert counter._classify_aten(aten.lift_fresh.default, (dev,), {}) == ("lift_fresh", "h2d")
    assert counter._classify_aten(aten.lift_fresh.default, (host,), {}) is None
    assert counter._classify_aten(aten._local_scalar_dense.default, (host,), {}) == ("_local_scalar_dense", "read")


# -- hidden reads in transformers' forward ----------------------------------------------------------------


def test_gpt2_without_mask_has_one_hidden_read_per_step(gpt2: PreTrainedModel, prompts: torch.Tensor) -> None:
    counter, tokens = _count(gpt2, prompts)
    assert len(set(tokens[:, prompts.shape[1] :].flatten().tolist())) > 1  # greedy output varies
    assert counter.per_step() == [(1, 0)] * STEPS
    assert counter.sites() == {f"{PADDING_CHECK_SITE} _local_scalar_dense": STEPS, **_setup_sites()}
    assert counter.over_budget(1) == []
    assert PADDING_CHECK_SITE in counter.over_budget(0)[0]


def test_llama_has_no_hidden_read_per_step(llama: PreTrainedModel, prompts: torch.Tensor) -> None:
    counter, tokens = _count(llama, prompts)
    assert len(set(tokens[:, prompts.shape[1] :].flatten().tolist())) > 1
    assert counter.per_step() == [(0, 0)] * STEPS
    assert counter.over_budget(0) == []


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cache_none_hits_the_packed_sequence_check(arch: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(arch)
    counter, _ = _count(model, request.getfixturevalue("prompts"), cache_kind="none")
    per_step = 2 if arch == "gpt2" else 1
    assert counter.per_step() == [(per_step, 0)] * STEPS
    assert counter.sites()[f"{PACKED_CHECK_SITE} _local_scalar_dense"] == STEPS


# -- removing them for the engine's own calls ---------------------------------------------------------------


@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_no_padding_check_removes_the_gpt2_read(gpt2: PreTrainedModel, prompts: torch.Tensor, cache_kind: str) -> None:
    outside, expected = _count(gpt2, prompts, cache_kind=cache_kind)
    assert outside.per_step() == [(1, 0)] * STEPS
    with no_padding_check(gpt2):
        inside, tokens = _count(gpt2, prompts, cache_kind=cache_kind)
    assert inside.per_step() == [(0, 0)] * STEPS
    assert torch.equal(tokens, expected)
    after, _ = _count(gpt2, prompts, cache_kind=cache_kind)  # restored on exit
    assert after.per_step() == [(1, 0)] * STEPS


def test_no_padding_check_is_per_instance(gpt2: PreTrainedModel, prompts: torch.Tensor) -> None:
    other = GPT2LMHeadModel(cast(GPT2Config, gpt2.config))
    torch.nn.Module.eval(other)
    with no_padding_check(gpt2):
        assert "warn_if_padding_and_no_attention_mask" in vars(gpt2.transformer)  # GPT2Model.forward calls it
        user, _ = _count(other, prompts, max_new_tokens=2)
    assert user.per_step() == [(1, 0)] * 2  # user code keeps the check
    assert not any("warn_if_padding_and_no_attention_mask" in vars(m) for m in gpt2.modules())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_4d_mask_removes_the_cache_none_read(arch: str, request: pytest.FixtureRequest) -> None:
    model, prompts = request.getfixturevalue(arch), request.getfixturevalue("prompts")
    _, expected = _count(model, prompts, cache_kind="none")
    counter, tokens = _count(model, prompts, cache_kind="none", mask_4d=True)
    assert counter.per_step() == [(0, 0)] * STEPS  # GPT-2: the padding check is skipped too (mask given)
    assert torch.equal(tokens, expected)


# -- declared reads and budgets ------------------------------------------------------------------------


def test_stop_flag_read_is_declared(llama: PreTrainedModel, prompts: torch.Tensor) -> None:
    counter, _ = _count(llama, prompts, stop_check=True)
    assert counter.per_step() == [(0, 1)] * STEPS
    assert {e.site for e in counter.events if e.declared} == {f"{THIS}:{_marker_line('# STOP-READ')}"}
    assert counter.sites() == _setup_sites() and counter.over_budget(0) == []


def test_extra_item_in_loop_is_one_hidden_read_per_step(llama: PreTrainedModel, prompts: torch.Tensor) -> None:
    line = _marker_line("# EXTRA-ITEM")
    counter, _ = _count(llama, prompts, stop_check=True, extra_item=True)
    assert counter.per_step() == [(1, 1)] * STEPS
    assert counter.sites() == {f"{THIS}:{line} _local_scalar_dense": STEPS, **_setup_sites()}
    messages = counter.over_budget(0)
    assert len(messages) == STEPS and all(f"{THIS}:{line}" in m for m in messages)
    assert counter.over_budget(1) == []
    report = counter.summary(0)
    assert f"{THIS}:{line}" in report and f"{STEPS} step(s) over" in report
