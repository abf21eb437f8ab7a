"""The roofline of the 2026 architectures: bytes a step reads, checked against what transformers really holds.

Mixture-of-experts layers are counted as routed (a router forced to one expert must cost exactly one expert's bytes
a layer), latent attention by the latent its cache stores, per-layer embeddings by the rows a step gathers (a table
ten times larger reads the same), and linear-attention, conv and SSM layers by the state tensors their cache holds
(checked against each family's own formula from its config). Tiny configs: ``families.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from families import FAMILIES, LATENT, MOE, STATEFUL, VOCAB, build, state_bytes
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, PreTrainedModel, StaticCache

import pytest_decodeperf.engine.roofline.analytic as roofline
from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.roofline.weights import weight_layout
from pytest_decodeperf.report import render_table

torch.set_num_threads(1)
PROMPT, STEPS, BATCH = 5, 4, 2


class Recording:
    """Records the bytes of the K/V tensors each ``update`` hands to attention (mixed into a cache class)."""

    returned: list[int]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        k, v = super().update(key_states, value_states, *args, **kwargs)  # type: ignore[misc]
        self.returned.append(k.nbytes + v.nbytes)
        return k, v


class RecordingDynamic(Recording, DynamicCache):
    pass


class RecordingStatic(Recording, StaticCache):
    pass


@torch.no_grad()
def decode(model: PreTrainedModel, cache: Any, batch: int = BATCH, steps: int = STEPS) -> list[int]:
    """Prefill PROMPT tokens, then ``steps`` single-token steps; the K/V bytes read by each decode step."""
    cache.returned = []
    ids = torch.randint(2, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(1))
    out = model(input_ids=ids, cache=cache, use_cache=True)
    reads = []
    for _ in range(steps):
        cache.returned.clear()
        out = model(input_ids=out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
        reads.append(sum(cache.returned))
    return reads


@pytest.mark.parametrize("name", list(FAMILIES))
def test_kv_held_and_read_are_what_the_dynamic_cache_holds_and_hands_to_attention(name: str) -> None:
    model = build(name)
    cache = RecordingDynamic(config=model.config)
    reads = decode(model, cache)
    total = PROMPT + STEPS
    assert roofline.cache_tensor_bytes(cache) == roofline.kv_cache_bytes_held(model.config, torch.float32, total, BATCH)
    expected = [roofline.kv_bytes_read_at(model.config, torch.float32, PROMPT + i + 1, BATCH) for i in range(STEPS)]
    assert reads == expected


@pytest.mark.parametrize("name", ["deepseek-v3", "gemma4", "qwen3-next", "falcon-h1", "jamba", "lfm2"])
def test_a_static_cache_allocates_and_hands_over_what_its_config_says(name: str) -> None:
    model = build(name)
    max_len = PROMPT + STEPS + 3
    cache = RecordingStatic(config=model.config, max_cache_len=max_len)
    reads = decode(model, cache)
    allocated = roofline.static_cache_bytes(model.config, torch.float32, BATCH, max_len)
    assert roofline.cache_tensor_bytes(cache) == allocated
    assert reads == [allocated] * STEPS  # every step reads the whole buffer


@pytest.mark.parametrize("name", LATENT)
def test_latent_attention_caches_the_latent_not_heads_times_head_dim(name: str) -> None:
    config = FAMILIES[name]()
    per_layer = (config.kv_lora_rank + config.qk_rope_head_dim) * 4
    specs = roofline.kv_layer_specs(config)
    assert all(s.latent for s in specs)
    assert roofline.kv_bytes_per_token(config, torch.float32) == config.num_hidden_layers * per_layer
    heads = 2 * config.num_key_value_heads * (config.qk_nope_head_dim + config.qk_rope_head_dim) * 4
    assert per_layer < heads  # what the formula of heads x head_dim would have said


@pytest.mark.parametrize("name", STATEFUL)
def test_recurrent_state_is_what_each_familys_mixer_keeps_and_does_not_grow(name: str) -> None:
    model = build(name)
    short, long = DynamicCache(config=model.config), DynamicCache(config=model.config)
    decode(model, _recording(short), steps=1)
    decode(model, _recording(long), steps=STEPS)
    assert roofline.cache_state_bytes(short) == roofline.cache_state_bytes(long) == state_bytes(model.config, BATCH)
    static = StaticCache(config=model.config, max_cache_len=PROMPT + STEPS)
    decode(model, _recording(static))
    assert roofline.cache_state_bytes(static) == state_bytes(model.config, BATCH)
    assert roofline.has_state_layers(model.config)


def _recording(cache: Any) -> Any:
    cache.returned = []
    return cache


def record(model: PreTrainedModel, name: str, cache: str = "dynamic", batch: int = BATCH, new: int = 6) -> Any:
    runner = Runner("cpu", rounds=1, warmup=0)
    return runner.run(Variant(name, cache, "baseline", batch, new, stop="none"), model, parity=False).record()


@pytest.mark.parametrize("name", STATEFUL)
def test_hybrid_models_get_a_roofline_with_the_state_read_and_written_every_step(name: str) -> None:
    model = build(name)
    for cache in ("dynamic", "static"):
        rec = record(model, name, cache)
        assert "no roofline" not in rec["note"], rec["note"]
        assert rec["state_bytes_per_step"] == 2 * state_bytes(model.config, BATCH)
        split = rec["weight_bytes_per_step"] + rec["kv_bytes_per_step"] + rec["state_bytes_per_step"]
        assert rec["bytes_per_step"] == pytest.approx(split)
        if cache == "static":
            assert rec["kv_cache_bytes"] == rec["kv_cache_bytes_analytic"]


# --- mixture of experts -----------------------------------------------------------------------------------------


def experts_of(model: PreTrainedModel) -> list[Any]:
    """The fused experts modules, found by their names (not by the engine's rule)."""
    return [m for n, m in model.named_modules() if n.endswith(".experts") and hasattr(m, "gate_up_proj")]


def one_expert_bytes(experts: Any) -> int:
    names = ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias")
    params = [getattr(experts, n) for n in names if isinstance(getattr(experts, n, None), torch.Tensor)]
    return sum(int(p.nbytes) for p in params) // int(experts.num_experts)


def force_one_expert(model: PreTrainedModel) -> list[Any]:
    """Every router (the ``gate``/``router`` beside each experts module) sends every token to expert 0."""
    handles = []
    for name, module in model.named_modules():
        if not any(child is not None and child in experts_of(model) for child in module.children()):
            continue
        router = getattr(module, "gate", None) or getattr(module, "router", None)
        assert router is not None, name

        def to_zero(_m: Any, _args: Any, out: Any) -> Any:
            return tuple(torch.zeros_like(t) if not t.is_floating_point() else t for t in out)

        handles.append(router.register_forward_hook(to_zero))
    return handles


def gathered_input_rows(model: PreTrainedModel, batch: int) -> int:
    """What an untied input embedding costs a step (its rows) less what the model holds of it (the table)."""
    table = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is not None and head.weight.untyped_storage().data_ptr() == table.untyped_storage().data_ptr():
        return 0
    return batch * int(table[0].nbytes) - int(table.nbytes)


@pytest.mark.parametrize("name", MOE)
def test_a_router_forced_to_one_expert_costs_one_experts_bytes_a_layer(name: str) -> None:
    model = build(name)
    groups = experts_of(model)
    assert groups, name
    handles = force_one_expert(model)
    try:
        rec = record(model, name, batch=3)
    finally:
        for handle in handles:
            handle.remove()
    every_expert = sum(one_expert_bytes(g) * g.num_experts for g in groups)
    one_each = sum(one_expert_bytes(g) for g in groups)
    expected = roofline.weight_bytes(model) - every_expert + one_each + gathered_input_rows(model, 3)
    assert rec["active_experts_per_step"] == len(groups)  # one expert a MoE layer, whatever the batch
    assert rec["routed_experts"] == sum(g.num_experts for g in groups)
    assert rec["weight_bytes_per_step"] == expected
    assert rec["weight_bytes_resident"] == roofline.weight_bytes(model)


def test_routing_counts_the_distinct_experts_each_step_across_the_batch() -> None:
    """At batch 1 a token picks k distinct experts a layer; a batch of 4 reads each expert its tokens share once,
    as the routers' own outputs say (hooked on the routers here, on the experts modules in the engine)."""
    model = build("mixtral")
    k, layers = model.config.num_experts_per_tok, model.config.num_hidden_layers
    single = record(model, "mixtral", batch=1)
    assert single["active_experts_per_step"] == k * layers
    runner = Runner("cpu", rounds=1, warmup=0)
    variant = Variant("mixtral", "dynamic", "baseline", 4, 6, stop="none")
    picked: list[list[int]] = []
    forwards = model.register_forward_pre_hook(lambda *_: picked.append([]))
    hooks = [
        block.gate.register_forward_hook(lambda _m, _a, out: picked[-1].append(int(torch.unique(out[2]).numel())))
        for block in (layer.mlp for layer in model.model.layers)
    ]
    try:
        probe = runner.probe(model, variant)
    finally:
        for handle in [forwards, *hooks]:
            handle.remove()
    assert probe.routing is not None and probe.routing.observed
    assert [list(step) for step in probe.routing.per_step] == picked[1:]  # forward 0 is the prefill
    assert any(sum(step) > k * layers for step in picked[1:])  # the batch's tokens do not all agree
    mean = sum(map(sum, picked[1:])) / len(picked[1:])
    rec = runner.run(variant, model, parity=False).record()
    assert rec["active_experts_per_step"] == pytest.approx(mean)
    note = "note: mixtral: routed experts a decode step reads, of 16 (distinct across the batch, as its routers picked)"
    assert f"{note}: dynamic b1 {k * layers:.1f}, dynamic b4 {mean:.1f}" in render_table([rec, single])


def test_experts_whose_routing_was_never_seen_are_all_counted_and_the_note_says_so() -> None:
    model = build("mixtral")
    block = model.model.layers[1].mlp
    block.forward = lambda hidden_states: hidden_states  # its experts never run, so no hook sees an index
    try:
        rec = record(model, "mixtral")
    finally:
        del block.forward
    assert "routing not observed (model.layers.1.mlp.experts): every expert counted, an upper bound" in rec["note"]
    assert rec["active_experts_per_step"] == rec["routed_experts"] == 16
    assert rec["weight_bytes_per_step"] == roofline.weight_bytes(model) + gathered_input_rows(model, BATCH)


# --- embeddings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gemma4", "gemma3n"])
def test_a_per_layer_embedding_table_ten_times_larger_reads_the_same_bytes(name: str) -> None:
    small, large = build(name), build(name, vocab_size_per_layer_input=10 * VOCAB)
    table = small.model.embed_tokens_per_layer.weight
    assert roofline.weight_bytes(large) - roofline.weight_bytes(small) == 9 * table.nbytes
    a, b = (roofline.decode_bytes(m, BATCH, PROMPT, STEPS, "dynamic") for m in (small, large))
    assert a.weights == b.weights and a.total == b.total
    assert a.weights_resident < b.weights_resident
    tables = {t.name.rsplit(".", 1)[-1]: t.rows for t in weight_layout(large).embeddings}
    assert tables["embed_tokens_per_layer"] == 10 * VOCAB


def test_an_untied_input_embedding_costs_its_rows_and_a_tied_one_is_the_lm_head() -> None:
    config: dict[str, Any] = {"vocab_size": 512, "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64}
    torch.manual_seed(0)
    tied = GPT2LMHeadModel(GPT2Config(**config)).eval()
    untied = GPT2LMHeadModel(GPT2Config(**config, tie_word_embeddings=False)).eval()
    row, table = 32 * 4, 512 * 32 * 4
    tied_step, untied_step = (roofline.decode_bytes(m, 3, PROMPT, STEPS, "dynamic").weights for m in (tied, untied))
    assert untied_step == tied_step + 3 * row  # three rows gathered, the table not streamed
    assert roofline.weight_bytes(untied) == roofline.weight_bytes(tied) + table
    positions = 64 * 32 * 4  # GPT-2's position table: gathered too
    assert tied_step == roofline.weight_bytes(tied) - positions + 3 * row


def test_a_layer_type_the_model_does_not_know_is_named_in_the_note() -> None:
    from pytest_decodeperf.engine.roofline.variant import variant_roofline

    model = build("qwen3-next", num_hidden_layers=2)
    model.config.layer_types = ["linear_attention", "mystery_attention"]
    roof = variant_roofline(model, Variant("qwen3-next", "dynamic", "baseline", 1, 4), 4, 1e10)
    assert roof.step is None
    assert roof.note == "no roofline: Qwen3NextConfig: layer type 'mystery_attention' has no per-token K/V model here"
