"""The independent reference and the inputs the harness refuses, each in one line.

transformers' generate() is the reference for every variant; a divergence is judged by the
reference's logits (near-tie: numerics; confident: a bug). Inputs the harness cannot judge with
(ids outside the vocabulary, more positions than the model takes, a collapsed model, a compile
that fell back to eager) fail with one line saying how to fix them.
"""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.parity.compare import Divergence, ParityReport
from pytest_decodeperf.engine.parity.judge import judge, judged_report
from pytest_decodeperf.errors import DecodePerfError

torch.set_num_threads(1)


def gpt2(seed: int = 0, **over: object) -> PreTrainedModel:
    fields: dict[str, object] = {
        "vocab_size": 300,
        "n_positions": 64,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 2,
        "initializer_range": 0.3,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    fields.update(over)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(**fields)).eval()


@pytest.fixture
def runner() -> Runner:
    return Runner("cpu", rounds=1, warmup=0)


def one_line(excinfo: pytest.ExceptionInfo[DecodePerfError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_a_pad_id_outside_the_vocabulary_is_one_line_with_the_fix(runner: Runner) -> None:
    model = gpt2(pad_token_id=50256, eos_token_id=50256)  # GPT-J's ids with a small vocabulary
    with pytest.raises(DecodePerfError) as caught:
        runner.run(Variant("mine", "dynamic", "baseline", 2, 8), model)
    assert "pad id 50256" in one_line(caught) and "vocabulary of 300" in str(caught.value)


def test_more_positions_than_the_model_takes_is_one_line(runner: Runner) -> None:
    with pytest.raises(DecodePerfError) as caught:
        runner.run(Variant("mine", "dynamic", "baseline", 1, 80), gpt2())
    assert "4 + new tokens 80 = 84 positions, but the model takes at most 64" in one_line(caught)


def test_a_collapsed_model_is_refused_instead_of_passing_trivially(runner: Runner) -> None:
    collapsed = gpt2(initializer_range=0.02)  # transformers' default init: greedy output repeats one token
    with pytest.raises(DecodePerfError) as caught:
        runner.run(Variant("mine", "dynamic", "pipelined", 2, 12, stop="none"), collapsed)
    message = one_line(caught)
    assert "repeats one token for the whole run" in message and "initializer_range" in message


def test_a_compile_that_falls_back_to_eager_fails_saying_so(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: model)  # what the recompile limit does, silently
    with pytest.raises(DecodePerfError) as caught:
        runner.run(Variant("mine", "static", "baseline", 1, 8, compile=True), gpt2())
    assert "torch.compile produced no graph at all" in one_line(caught)


def test_dynamos_recompile_limit_is_seen_by_the_compile_counters() -> None:
    """A real hit: a frame recompiled past the limit runs eager from then on, with only a log warning."""
    from pytest_decodeperf.engine.measure.profiling import compile_counters

    # config.patch, not monkeypatch: monkeypatch's restore goes through setattr and leaves the option hidden
    # ("recompile_limit does not exist" in every later compile of the process)
    with torch._dynamo.config.patch(recompile_limit=1):
        before = compile_counters()["recompile_limit_hits"]
        doubled = torch.compile(lambda x: x * 2 + 1, dynamic=False)
        for n in (2, 3, 4):
            doubled(torch.ones(n))
    assert compile_counters()["recompile_limit_hits"] > before


def test_a_compile_that_hits_the_recompile_limit_fails_saying_so(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After >= 1 graph the rest can still go eager: the limit hit during the measurement fails the item."""
    from pytest_decodeperf.engine import runner as runner_module
    from pytest_decodeperf.engine.measure import profiling

    hits = iter(range(100))
    real = profiling.compile_counters

    def counters() -> dict[str, int]:
        return {**real(), "unique_graphs": 1 + next(hits), "recompile_limit_hits": next(hits)}

    monkeypatch.setattr(torch, "compile", lambda model, mode=None: model)
    monkeypatch.setattr(runner_module, "compile_counters", counters)
    model = gpt2()
    with pytest.raises(DecodePerfError) as caught:
        runner.run(Variant("mine", "static", "baseline", 1, 8, compile=True), model)
    assert "torch.compile hit dynamo's recompile limit while measuring" in one_line(caught)
    assert runner.held.of(model).compiled == {}  # dynamo keeps a hit frame eager: the next variant compiles afresh


def test_an_encoder_decoder_is_refused_in_one_line_by_every_mode(runner: Runner) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(
        T5Config(vocab_size=300, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, decoder_start_token_id=0)
    ).eval()
    for stream in ("baseline", "hf-generate"):
        with pytest.raises(DecodePerfError) as caught:
            runner.run(Variant("t5", "dynamic", stream, 1, 8), t5)
        assert "T5ForConditionalGeneration is an encoder-decoder" in one_line(caught)


def test_a_reference_whose_rows_all_stop_at_once_is_refused() -> None:
    from pytest_decodeperf.engine.spec.workload import check_not_degenerate

    generated = torch.tensor([[7, 3, 4, 5], [7, 5, 6, 3]])
    with pytest.raises(DecodePerfError, match=r"^m: every row stops at its first step in the reference: nothing"):
        check_not_degenerate(generated, [7], "m")
    check_not_degenerate(generated, [4], "m")  # rows stopping later are fine


def test_a_new_model_never_inherits_a_freed_models_workload(runner: Runner) -> None:
    """Python reuses the id of a freed object: state keyed by id() handed the next model stale prompts."""
    first = gpt2(seed=1, vocab_size=300)
    runner.run(Variant("a", "dynamic", "baseline", 2, 8), first)
    del first
    gc.collect()
    for seed in range(2, 6):  # several tries: any of them may land on the freed id
        model = gpt2(seed=seed, vocab_size=120, n_embd=64, tie_word_embeddings=False)  # 300-token prompts: no fit
        result = runner.run(Variant("b", "dynamic", "baseline", 2, 8), model)
        assert int(result.workload.prompts.max()) < 120
        assert result.parity is not None and result.parity.ok, str(result.parity)
    assert len(runner.held.state) <= 1  # nothing is kept for a freed model


def test_generate_with_stop_none_ignores_the_models_own_eos(runner: Runner) -> None:
    """generate() falls back to the model's EOS when none is passed: a row would stop early."""
    model = gpt2()
    free = runner.generate_reference(
        model,
        Variant("m", stop="none", batch_size=2, new_tokens=12),
        runner.workload(model, Variant("m", stop="none", batch_size=2, new_tokens=12)),
    )
    emitted = int(free[0][0, 3])
    model.generation_config.eos_token_id = emitted  # the model's own EOS is a token it emits mid-run
    result = Runner("cpu", rounds=1, warmup=0).run(Variant("m", "dynamic", "hf-generate", 2, 12, stop="none"), model)
    assert result.output.new_tokens == 12 and result.parity is not None and result.parity.ok
    assert model.generation_config.eos_token_id == emitted  # restored


def test_a_divergence_is_judged_by_the_reference_logits() -> None:
    model = gpt2()
    prompts = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        logits = model(prompts).logits[0, -1]
    best, second = torch.topk(logits, 2).indices.tolist()
    far = int(torch.argmin(logits))
    expected = torch.tensor([[best]])
    confident = judge(model, prompts, expected, Divergence(0, 0, best, far, 1, 1))
    assert not confident.numerics and confident.margin > 0
    # A near-tie: the same logits, as if two kernels rounded differently.
    with torch.no_grad():
        model.lm_head.weight[second] = model.lm_head.weight[best]
    tie = judge(model, prompts, expected, Divergence(0, 0, best, second, 1, 1))
    assert tie.numerics and abs(tie.margin) < 1e-5
    report = judged_report(
        model, prompts, expected, ParityReport("v", [Divergence(0, 0, best, second, 1, 1)], (1, 1), (1, 1), "generate")
    )
    assert report.ok and "near-tie" in str(report)


def test_a_model_in_another_dtype_than_its_variant_is_refused(runner: Runner) -> None:
    """A decode_model override that ignores decode_variant.dtype would file its numbers under the wrong dtype."""
    with pytest.raises(DecodePerfError) as caught:
        runner.run(Variant("mine", "dynamic", "baseline", 1, 4, dtype="bfloat16"), gpt2())
    assert "the model's weights are float32, but the variant says bfloat16" in one_line(caught)


def test_the_dtype_check_goes_by_most_weights_and_guards_the_ab_too() -> None:
    """A few float32 weights (transformers' _keep_in_fp32_modules) do not make a bfloat16 model float32;
    the A/B's rounds (engine/paired.py) refuse a mismatch as Runner.run does."""
    from pytest_decodeperf.engine.paired import PairedRounds
    from pytest_decodeperf.engine.spec.checks import weights_dtype

    model = gpt2().to(torch.bfloat16)
    model.transformer.ln_f.float()  # kept in float32, as some checkpoints keep their norms
    assert weights_dtype(model) == "bfloat16"
    with pytest.raises(DecodePerfError, match=r"the model's weights are float32, but the variant says bfloat16"):
        PairedRounds(Runner("cpu", rounds=1, warmup=0), gpt2(), Variant("mine", dtype="bfloat16", new_tokens=4))
