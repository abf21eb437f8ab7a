"""Tests for roofline.py: analytic bytes vs. what transformers' caches actually hold and hand to attention."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    FalconConfig,
    GPT2Config,
    GPTBigCodeConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    StaticCache,
)

import pytest_decodeperf.engine.roofline.analytic as roofline
from pytest_decodeperf.engine.decode.caches import cache_keyword

torch.set_num_threads(1)

VOCAB = 256
PROMPT = 5
STEPS = 4  # total positions cached after the loop: PROMPT + STEPS = 9
WINDOW = 4  # < PROMPT + STEPS, so windowed layers really slide
TOK: dict[str, Any] = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
LLAMA_LIKE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
    **TOK,
}


def gpt2() -> PreTrainedConfig:
    return GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, **TOK)


def llama_gqa() -> PreTrainedConfig:
    return LlamaConfig(**LLAMA_LIKE, num_key_value_heads=2)


def llama_head_dim() -> PreTrainedConfig:
    # explicit head_dim != hidden_size // num_attention_heads (16)
    return LlamaConfig(**LLAMA_LIKE, num_key_value_heads=1, head_dim=24)


def bigcode_mqa() -> PreTrainedConfig:
    return GPTBigCodeConfig(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, multi_query=True, **TOK)


def falcon_mqa() -> PreTrainedConfig:
    return FalconConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, multi_query=True, **TOK
    )


def falcon_new_arch() -> PreTrainedConfig:
    return FalconConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_kv_heads=2,
        new_decoder_architecture=True,
        **TOK,
    )


def mistral_sliding() -> PreTrainedConfig:
    return MistralConfig(**LLAMA_LIKE, num_key_value_heads=2, sliding_window=WINDOW)


def qwen2_mixed() -> PreTrainedConfig:
    # layer 0 full attention, layers >= max_window_layers sliding (config.layer_types)
    cfg = {**LLAMA_LIKE, "num_hidden_layers": 3}
    return Qwen2Config(
        **cfg, num_key_value_heads=2, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1
    )


CONFIGS: dict[str, Callable[[], PreTrainedConfig]] = {
    "gpt2-mha": gpt2,
    "llama-gqa": llama_gqa,
    "llama-head_dim": llama_head_dim,
    "bigcode-mqa": bigcode_mqa,
    "falcon-mqa": falcon_mqa,
    "falcon-new-arch": falcon_new_arch,
    "mistral-sliding": mistral_sliding,
    "qwen2-mixed": qwen2_mixed,
}
_MODELS: dict[str, PreTrainedModel] = {}
_AUTO: Any = AutoModelForCausalLM  # from_config is untyped


def build(name: str) -> PreTrainedModel:
    if name not in _MODELS:
        torch.manual_seed(0)
        model = _AUTO.from_config(CONFIGS[name](), dtype=torch.float32)
        _MODELS[name] = model.eval()
    return _MODELS[name]


def cache_nbytes(cache: Any) -> int:
    return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values) if t is not None)


class RecordingDynamicCache(DynamicCache):
    """Records the bytes of the K/V tensors that `update` hands to attention."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.returned: list[int] = []

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        k, v = super().update(key_states, value_states, *args, **kwargs)
        self.returned.append(k.nbytes + v.nbytes)
        return k, v


class RecordingStaticCache(StaticCache):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.returned: list[int] = []

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        k, v = super().update(key_states, value_states, *args, **kwargs)
        self.returned.append(k.nbytes + v.nbytes)
        return k, v


@torch.no_grad()
def run_decode(model: PreTrainedModel, cache: Any, batch: int) -> list[int]:
    """Greedy prefill of PROMPT tokens then STEPS single-token steps; returns K/V bytes read per decode step."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (batch, PROMPT), generator=gen)
    kw = cache_keyword(model) or "past_key_values"
    out = model(input_ids=ids, use_cache=True, **{kw: cache})
    reads: list[int] = []
    for _ in range(STEPS):
        nxt = out.logits[:, -1:].argmax(-1)
        recorded = getattr(cache, "returned", None)
        if recorded is not None:
            recorded.clear()
        out = model(input_ids=nxt, use_cache=True, **{kw: cache})
        if recorded is not None:
            reads.append(sum(recorded))
    assert cache.get_seq_length() == PROMPT + STEPS
    return reads


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dynamic_cache_held_and_read_match_analytic(name: str) -> None:
    model = build(name)
    batch = 2
    cache = RecordingDynamicCache(config=model.config)
    reads = run_decode(model, cache, batch)
    total = PROMPT + STEPS

    held = roofline.kv_cache_bytes_held(model.config, torch.float32, total, batch)
    assert cache_nbytes(cache) == held
    specs = roofline.kv_layer_specs(model.config)
    if all(s.window is None for s in specs):
        assert held == total * batch * roofline.kv_bytes_per_token(model.config, torch.float32)
    else:  # the window really bites: fewer bytes than the unwindowed count
        assert held < total * batch * roofline.kv_bytes_per_token(model.config, torch.float32)

    # What DynamicCache.update hands to attention at each step == analytic read for that step.
    expected = [roofline.kv_bytes_read_at(model.config, torch.float32, PROMPT + i + 1, batch) for i in range(STEPS)]
    assert reads == expected
    step = roofline.decode_bytes(model, batch, PROMPT, STEPS, "dynamic")
    assert step.kv_read == pytest.approx(sum(reads) / STEPS)
    assert step.kv_written == roofline.kv_bytes_written_per_step(model.config, torch.float32, batch)


def test_kv_heads_per_family() -> None:
    heads = {name: {s.kv_heads for s in roofline.kv_layer_specs(CONFIGS[name]())} for name in CONFIGS}
    assert heads["gpt2-mha"] == {4}
    assert heads["llama-gqa"] == {2}
    assert heads["bigcode-mqa"] == {1}
    assert heads["falcon-mqa"] == {1}
    assert heads["falcon-new-arch"] == {4}  # transformers broadcasts K/V to all heads before caching
    assert {s.head_dim for s in roofline.kv_layer_specs(llama_head_dim())} == {24}
    windows = [s.window for s in roofline.kv_layer_specs(qwen2_mixed())]
    assert windows == [None, WINDOW, WINDOW]


def test_generate_cache_matches() -> None:
    model: Any = build("llama-gqa")  # generate() is loosely typed
    ids = torch.randint(2, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=6, do_sample=False, return_dict_in_generate=True, pad_token_id=0, eos_token_id=None
        )
    positions = out.sequences.shape[1] - 1  # the last generated token is never fed back
    returned = out.cache if "cache" in out else out.past_key_values  # renamed in transformers 5.24
    assert cache_nbytes(returned) == roofline.kv_cache_bytes_held(model.config, torch.float32, positions)


@pytest.mark.parametrize("name", ["gpt2-mha", "llama-gqa", "mistral-sliding", "qwen2-mixed"])
def test_static_cache_bytes(name: str) -> None:
    model = build(name)
    batch, max_len = 2, PROMPT + STEPS + 3
    cache = RecordingStaticCache(config=model.config, max_cache_len=max_len)
    assert cache_nbytes(cache) == 0  # allocated lazily on first update
    reads = run_decode(model, cache, batch)
    allocated = roofline.static_cache_bytes(model.config, torch.float32, batch, max_len)
    assert cache_nbytes(cache) == allocated
    assert reads == [allocated] * STEPS  # every decode step reads the whole preallocated buffer
    step = roofline.decode_bytes(model, batch, PROMPT, STEPS, "static", max_cache_len=max_len)
    assert step.kv_read == allocated
    if name in ("mistral-sliding", "qwen2-mixed"):
        unwindowed = batch * max_len * roofline.kv_bytes_per_token(model.config, torch.float32)
        assert allocated < unwindowed


def test_decode_bytes_none_counts_weights_only() -> None:
    model = build("gpt2-mha")
    step = roofline.decode_bytes(model, 1, PROMPT, STEPS, "none")
    assert step.kv_read == 0 and step.kv_written == 0 and step.state == 0
    wpe = model.transformer.wpe.weight  # type: ignore[union-attr]
    # each step re-runs its whole sequence: PROMPT + i + 1 positions gathered from the position table
    rows = sum(PROMPT + i + 1 for i in range(STEPS)) / STEPS
    assert step.total == step.weights == roofline.weight_bytes(model) - wpe.nbytes + rows * wpe[0].nbytes
    assert "weight" in step.note
    with pytest.raises(ValueError, match="cache must be"):
        roofline.decode_bytes(model, 1, PROMPT, STEPS, "paged")


def test_weight_bytes_tied_counted_once() -> None:
    model: Any = build("gpt2-mha")
    wte = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is wte
    state = model.state_dict()
    naive = sum(t.numel() * t.element_size() for t in state.values())  # counts the tied matrix twice
    assert "lm_head.weight" in state
    assert roofline.weight_bytes(model) == naive - wte.numel() * wte.element_size()

    torch.manual_seed(0)
    untied = _AUTO.from_config(GPT2Config(**{**gpt2().to_dict(), "tie_word_embeddings": False}))
    assert roofline.weight_bytes(untied) == roofline.weight_bytes(model) + wte.numel() * wte.element_size()

    # Aliasing through distinct Parameter objects sharing storage is also counted once.
    untied.lm_head.weight = torch.nn.Parameter(untied.transformer.wte.weight.data)
    assert roofline.weight_bytes(untied) == roofline.weight_bytes(model)


def test_kv_bytes_per_token_formula_and_errors() -> None:
    cfg = llama_gqa()
    assert roofline.kv_bytes_per_token(cfg, torch.float16) == 2 * 2 * 16 * 2 * 2  # layers*kv_heads*hd*(K,V)*size
    assert roofline.kv_bytes_per_token(cfg, torch.float32) == 2 * roofline.kv_bytes_per_token(cfg, torch.float16)
    with pytest.raises(ValueError, match="PreTrainedConfig"):
        roofline.kv_bytes_per_token(PreTrainedConfig(), torch.float32)


def test_sliding_read_is_min_p_w() -> None:
    cfg = mistral_sliding()
    per_pos = roofline.kv_bytes_per_token(cfg, torch.float32)
    got = [roofline.kv_bytes_read_at(cfg, torch.float32, p) for p in range(1, 9)]
    assert got == [min(p, WINDOW) * per_pos for p in range(1, 9)]


def test_measure_bandwidth_cpu() -> None:
    bw = roofline.measure_bandwidth("cpu", nbytes=4 << 20, repeats=3)
    assert math.isfinite(bw) and bw > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA guard")
def test_measure_bandwidth_cuda_guard() -> None:
    with pytest.raises(RuntimeError, match="CUDA"):
        roofline.measure_bandwidth("cuda", nbytes=1 << 20)


def test_achieved() -> None:
    gbs, frac, floor_ms = roofline.achieved(2e9, 4.0, 1e12)
    assert gbs == pytest.approx(500.0)
    assert frac == pytest.approx(0.5)
    assert floor_ms == pytest.approx(2.0)
    assert floor_ms == pytest.approx(4.0 * frac)


# --- in the engine's records ------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama-gqa"])
def test_every_record_carries_the_roofline_and_the_static_cache_matches_its_config(model_name: str) -> None:
    from pytest_decodeperf import Runner, Variant
    from pytest_decodeperf.report import render_table

    torch.set_num_threads(1)
    runner = Runner("cpu", rounds=2, warmup=0)
    records = [
        runner.run(Variant(model_name, cache=cache, stream="baseline", batch_size=2, new_tokens=8)).record()
        for cache in ("dynamic", "static")
    ]
    model = runner.model(model_name)
    for rec in records:
        bandwidth = rec["bandwidth_gb_per_s"]
        assert bandwidth is not None and bandwidth > 0
        assert rec["bytes_per_step"] is not None and rec["weight_bytes_resident"] == roofline.weight_bytes(model)
        assert rec["bytes_per_step"] == rec["weight_bytes_per_step"] + rec["kv_bytes_per_step"]
        assert rec["floor_ms_per_step"] == pytest.approx(rec["bytes_per_step"] / (bandwidth * 1e9) * 1e3)
        assert rec["bw_fraction"] == pytest.approx(rec["floor_ms_per_step"] / rec["ms_per_token"])
        assert rec["times_floor"] == pytest.approx(1 / rec["bw_fraction"])
    dynamic, static = records
    assert dynamic["kv_cache_bytes"] is None
    expected = roofline.static_cache_bytes(model.config, torch.float32, 2, 4 + 8)
    assert static["kv_cache_bytes"] == static["kv_cache_bytes_analytic"] == expected
    assert "static cache holds" not in static["note"]
    table = render_table(records)
    assert "floor ms" in table and "% bw" in table
    assert f"{100 * static['bw_fraction']:.1f}" in table


def test_a_model_whose_kv_layout_is_unknown_still_measures_and_says_why() -> None:
    from pytest_decodeperf.engine.results import Roofline

    fields = Roofline(None, 8e9, note="no roofline: FooConfig: cannot tell").fields(2.0)
    assert fields["bytes_per_step"] is None and fields["bw_fraction"] is None
    assert fields["bandwidth_gb_per_s"] == pytest.approx(8.0)


# --- the static cache's allocation against its analytic size (engine/roofline/kv_memory.py) ---


def _rounded(cache: Any) -> int:
    """What the cache's tensors ask an allocator for now (the device's count, simulated on the host)."""
    return sum(
        int(t.nbytes)
        for layer in cache.layers
        for t in (
            getattr(layer, "keys", None),
            getattr(layer, "values", None),
            getattr(layer, "cumulative_length", None),
        )
        if isinstance(t, torch.Tensor)
    )


def test_the_watch_sees_each_static_layer_allocate_at_its_first_update() -> None:
    """transformers' StaticLayer allocates in lazy_initialization: the watch measures the requests across it."""
    from transformers import StaticCache

    from pytest_decodeperf import build_model, generate, make_workload
    from pytest_decodeperf.engine.decode.caches import CacheSlot, get_cache
    from pytest_decodeperf.engine.decode.stream_modes import get_stop_policy
    from pytest_decodeperf.engine.roofline.kv_memory import AllocationWatch

    model = build_model("tiny-llama-gqa")
    w = make_workload(model, 3, 6, "none")
    slot = CacheSlot(get_cache("static"), model, 3, 4 + 6)
    cache = slot.kept
    assert isinstance(cache, StaticCache)
    watch = AllocationWatch(lambda: _rounded(cache)).watch(cache)
    assert watch.result(1) is None  # nothing allocated before the first generation
    with torch.inference_mode():
        generate(model, replace(w, max_new_tokens=6), slot, get_stop_policy("baseline"))
    analytic = roofline.static_cache_bytes(model.config, torch.float32, 3, 10)
    check = watch.result(analytic)
    assert check is not None and check.layers == model.config.num_hidden_layers
    assert check.matches and check.note() == "" and analytic <= check.allocated <= _rounded(cache)
    with torch.inference_mode():  # a reset cache is reused: no second allocation
        generate(model, replace(w, max_new_tokens=6), slot, get_stop_policy("baseline"))
    assert watch.result(analytic) == check


def test_a_static_cache_taking_more_than_its_config_says_is_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the runner and the device seam: an allocator that handed the cache twice its size."""
    from pytest_decodeperf import Runner, Variant
    from pytest_decodeperf.engine.device.runtime import HostRuntime

    runner = Runner("cpu", rounds=1, warmup=0)
    factor = {"x": 1}

    def allocated(self: HostRuntime) -> int:
        slot = runner._last_slot
        return factor["x"] * _rounded(slot.kept) if slot is not None and slot.kept is not None else 0

    monkeypatch.setattr(HostRuntime, "requested_bytes", allocated)
    good = runner.run(Variant("tiny-gpt2", "static", "baseline", 2, 8)).record()
    assert good["kv_cache_bytes_analytic"] <= good["kv_cache_allocated_bytes"] <= good["kv_cache_bytes_analytic"] + 4096
    assert "allocator" not in good["note"]
    factor["x"] = 2
    bad = runner.run(Variant("tiny-gpt2", "static", "baseline", 4, 8)).record()
    assert bad["kv_cache_allocated_bytes"] >= 2 * bad["kv_cache_bytes_analytic"]
    assert "static cache: it asked the allocator for" in bad["note"] and "does not fit this model" in bad["note"]


def test_without_an_allocator_count_no_allocation_is_claimed() -> None:
    from pytest_decodeperf import Runner, Variant

    rec = Runner("cpu", rounds=1, warmup=0).run(Variant("tiny-gpt2", "static", "baseline", 1, 4)).record()
    assert rec["kv_cache_allocated_bytes"] is None and rec["generation_peak_bytes"] is None


def test_a_dynamic_caches_generation_peak_is_summarised_against_a_static_caches_size() -> None:
    from pytest_decodeperf import Runner, Variant
    from pytest_decodeperf.report import render_table

    rec = Runner("cpu", rounds=1, warmup=0).run(Variant("tiny-gpt2", "dynamic", "baseline", 1, 4)).record()
    assert "generation's peak" not in render_table([rec])  # no CUDA memory round: nothing claimed
    rec["generation_peak_bytes"], rec["kv_cache_bytes_analytic"] = 3 * 1024, 1024
    assert "peak over what was resident is 3.00x to 3.00x a static cache" in render_table([rec])
