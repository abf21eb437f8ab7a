"""The sync budget: blocking device reads per decode step are counted by op on every device and gated exactly.

The counter (``engine/measure/syncs.py``) sees ``.item()``, ``bool(t)``, ``nonzero``, ``equal``, device-to-host
copies and pageable host-to-device builds; on CUDA each one stalls the GPU. The decode loop's modes
may read only their own stop flag (declared); anything else in a decode step fails the item with its
``file:line``.
"""

from __future__ import annotations

import os

import pytest
import torch
from test_asv_history import make_record, repo, results_dir, write  # noqa: F401
from test_regression import compare, row
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedModel

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.decode.stream_modes import STOP_POLICIES, StopPolicy, StopRun
from pytest_decodeperf.engine.device.runtime import HostRuntime
from pytest_decodeperf.report import render_table

torch.set_num_threads(1)
THIS = os.path.relpath(__file__)


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner("cpu", rounds=1, warmup=0)


@pytest.mark.parametrize("model", ["tiny-gpt2", "gpt2", "tiny-llama-gqa"])
@pytest.mark.parametrize("cache", ["none", "dynamic", "static"])
def test_the_loops_modes_read_nothing_but_their_stop_flag(runner: Runner, model: str, cache: str) -> None:
    """GPT-2 hides a read in every forward (its padding check), cache=none one in transformers' masking:
    the engine removes both for its own calls, so only the stop policy's flag read is left."""
    if model == "gpt2" and cache == "none":
        pytest.skip("GPT-2 small without a cache re-runs 64 positions per step: covered by tiny-gpt2")
    want = {"baseline": 1.0, "deferred": 1.0, "pipelined": 1.0, "nostop": 0.0}
    for stream, flag_reads in want.items():
        variant = Variant(model, cache=cache, stream=stream, batch_size=2, new_tokens=6)
        m = runner.model(model)
        syncs = runner.count_syncs(m, variant, runner.workload(m, variant), None)
        assert syncs is not None
        assert (syncs.max_hidden, syncs.declared_per_step, syncs.budget) == (0, flag_reads, 0), (stream, syncs)
        assert not syncs.over_budget


def test_generate_modes_are_counted_but_not_gated_by_default(runner: Runner) -> None:
    variant = Variant("tiny-llama-gqa", cache="dynamic", stream="hf-generate", batch_size=2, new_tokens=6)
    m = runner.model("tiny-llama-gqa")
    syncs = runner.count_syncs(m, variant, runner.workload(m, variant), None)
    assert syncs is not None and syncs.budget is None and not syncs.over_budget
    # generate()'s blocking StopCheck: one read per decode step, inside transformers.
    assert syncs.max_hidden == 1 and all(site.startswith("transformers/") for site in syncs.sites)


class ReadsInPublish(StopRun):
    """A stop policy with a bug: it reads the flag on the host inside the step (not declared)."""

    def publish(self, step: int, all_finished: torch.Tensor) -> None:
        super().publish(step, all_finished)
        self.peeked = bool(all_finished.item())  # the extra read the gate must name


BAD_LINE = f"{THIS}:{ReadsInPublish.publish.__code__.co_firstlineno + 2}"


def test_an_extra_read_in_the_loop_fails_the_budget_naming_its_line(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = StopPolicy("peeking", 1, 1, "deferred, but peeks at the flag every step")
    monkeypatch.setitem(STOP_POLICIES, "peeking", policy)
    monkeypatch.setattr(
        StopPolicy, "start", lambda self, device, runtime=None: ReadsInPublish(self, device, runtime or HostRuntime())
    )
    result = runner.run(
        Variant("tiny-gpt2", cache="dynamic", stream="peeking", batch_size=2, new_tokens=6, stop="none")
    )
    assert result.syncs is not None and result.syncs.over_budget
    message = result.syncs.message(result.variant.id)
    assert f"{BAD_LINE} _local_scalar_dense x5" in message, message
    assert message.startswith("tiny-gpt2-dynamic-peeking-b2: 1 hidden blocking device read(s) in a decode step")
    record = result.record()
    assert record["max_syncs_per_step"] == 1 and record["sync_budget"] == 0
    assert "1+1!" in render_table([record])
    # A declared budget admits it.
    allowed = runner.run(
        Variant("tiny-gpt2", cache="dynamic", stream="peeking", batch_size=2, new_tokens=6, stop="none"),
        max_syncs_per_step=1,
    )
    assert allowed.syncs is not None and not allowed.syncs.over_budget


FORWARD_READ_CONFTEST = """
import pytest
from pytest_decodeperf import build_model


@pytest.fixture
def decode_model(decode_variant):
    model = build_model(decode_variant.model)
    original = model.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits.sum().item()  # a hidden sync in the model's forward
        return out

    model.forward = forward
    return model
"""


def test_a_read_in_the_models_forward_fails_the_item_with_its_file_and_line(
    pytester: pytest.Pytester, run_decodeperf: object
) -> None:
    pytester.makeconftest(FORWARD_READ_CONFTEST)
    pytester.makepyfile(
        test_gen="""
        import pytest


        @pytest.mark.decode_perf(stream=("baseline", "pipelined"), new_tokens=6)
        def test_gen():
            pass


        @pytest.mark.decode_perf(stream="pipelined", new_tokens=6, max_syncs_per_step=1)
        def test_declared():
            pass
        """
    )
    result = run_decodeperf()  # type: ignore[operator]
    lines = FORWARD_READ_CONFTEST.lstrip("\n").splitlines()
    line = next(n for n, text in enumerate(lines, 1) if ".item()" in text)
    result.assert_outcomes(passed=1, failed=2)
    want = "*tiny-gpt2-dynamic-pipelined-b1: 1 hidden blocking device read(s) in a decode step, budget 0*"
    result.stdout.fnmatch_lines([f"{want}conftest.py:{line} _local_scalar_dense*"])


def test_history_fails_on_any_increase_of_the_sync_count(repo: tuple) -> None:
    before = replace_syncs(make_record(ms=2.0, seed=1), 0.0)
    write(repo, 0, [before])
    now = [replace_syncs(make_record(ms=2.0, seed=1), 1.0)]
    write(repo, 1, now)
    cmp = compare(repo, 1, now, fail_pct=500)  # no statistics gate would call 2.0 vs 2.0 a change
    syncs = row(cmp, "track_syncs_per_step")
    assert (syncs.old, syncs.new, syncs.mark) == (0.0, 1.0, "+")
    assert cmp.failed and [r.benchmark.rsplit(".", 1)[1] for r in cmp.regressions] == ["track_syncs_per_step"]


def replace_syncs(record: dict, value: float) -> dict:  # type: ignore[type-arg]
    return {**record, "syncs_per_step": value}


def tiny_gemma3(window: int) -> PreTrainedModel:
    """Gemma 3's text model, two sliding-window layers of ``window`` tokens and two full ones, seeded."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        layer_types=["sliding_attention", "full_attention"] * 2,
        sliding_window=window,
        tie_word_embeddings=False,
        initializer_range=0.3,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return Gemma3ForCausalLM(config).eval()


def test_a_full_sliding_window_static_cache_builds_a_device_index_per_sliding_layer_per_step(runner: Runner) -> None:
    """transformers' StaticSlidingWindowLayer (Gemma 2/3/4, gpt-oss, Cohere2 ``layer_types``), once its window is full,
    rolls the cache and overwrites the last slot through ``torch.tensor([-1], device=...)`` every decode step: a
    pageable host-to-device copy, so a blocking sync per sliding layer per step on CUDA (docs/explanation/syncs.md).
    The gate fails the loop's modes naming the line; generate()'s count it without a gate."""
    for window, want in ((4, 2), (16, 0)):  # 4 prompt + 8 new tokens: a window of 16 never fills
        model = tiny_gemma3(window)
        for stream, flag in (("baseline", 1.0), ("hf-generate", 0.0)):
            variant = Variant("tiny-gemma3", cache="static", stream=stream, new_tokens=8, stop="none")
            syncs = runner.count_syncs(model, variant, runner.workload(model, variant), None)
            assert syncs is not None and syncs.declared_per_step == flag
            cache_sites = [s for s in syncs.sites if s.startswith("transformers/cache_utils.py:")]
            if want == 0:
                assert cache_sites == [], syncs
                continue
            assert [s.split(" ", 1)[1] for s in cache_sites] == ["tensor(device=) x14"], syncs  # 2 layers x 7 steps
            assert syncs.max_hidden == want + (stream == "hf-generate")  # generate()'s own StopCheck besides
            assert syncs.over_budget == (stream == "baseline")  # generate()'s modes: reported, not gated
        dynamic = Variant("tiny-gemma3", cache="dynamic", new_tokens=8, stop="none")
        counted = runner.count_syncs(model, dynamic, runner.workload(model, dynamic), None)
        assert counted is not None and counted.max_hidden == 0  # a dynamic cache's sliding layers slice instead
