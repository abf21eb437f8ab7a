"""Speculative decoding under the gate: generate()'s prompt lookup and assisted (draft model) modes.

Greedy speculative decoding must give the plain greedy tokens exactly; what it proposes and what the verifier keeps
is counted where generate() decides it (``engine/decode/hf_generate.SpeculationWatch``), and its speedup is against
plain generate() on the same cache, rounds alternating.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pytest_decodeperf import DecodePerfError, Runner, Variant
from pytest_decodeperf.engine.decode import generation

torch.set_num_threads(1)
NEW = 24


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner("cpu", rounds=2, warmup=0)


def stranger() -> GPT2LMHeadModel:
    """A draft with tiny-gpt2's vocabulary but other weights: it proposes tokens the model rarely keeps."""
    torch.manual_seed(7)
    config = GPT2Config(vocab_size=2048, n_embd=64, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return GPT2LMHeadModel(config).eval()


def test_prompt_lookup_gives_the_greedy_tokens_and_counts_its_proposals(runner: Runner) -> None:
    result = runner.run(Variant("tiny-gpt2", "dynamic", "hf-prompt-lookup", 1, NEW, lookup_tokens=3))
    assert result.parity is not None and result.parity.ok, str(result.parity)
    rec = result.record()
    assert rec["lookup_tokens"] == 3 and rec["draft"] is None and rec["draft_steps"] == 0
    assert rec["verify_steps"] == result.output.steps and rec["proposed_tokens"] is not None
    assert rec["accepted_tokens"] is not None and 0 <= rec["accepted_tokens"] <= rec["proposed_tokens"]
    assert rec["paired_with"] == "hf-generate" and rec["vs_baseline"] is not None
    # generate()'s own reads: reported with their lines, not gated (no budget was set)
    assert rec["sync_budget"] is None and any("transformers/generation/" in s for s in rec["sync_sites"])
    assert result.variant.id == "tiny-gpt2-dynamic-hf-prompt-lookup-b1-lookup3"


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_draft_identical_to_the_model_has_every_proposal_kept(
    runner: Runner, cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without stops (a proposal past a row's EOS is not kept, whoever made it). The model is its own draft: its
    forwards while drafting are draft steps, not verify steps, as an independent count of generate()'s verify
    iterations (one proposal each) shows."""
    from transformers.generation.candidate_generator import AssistedCandidateGenerator

    model = runner.model("tiny-gpt2")
    variant = Variant("tiny-gpt2", cache, "hf-assisted", 1, NEW, stop="none", draft="self")
    iterations: list[int] = []
    real = AssistedCandidateGenerator.get_candidates

    def counted(self: AssistedCandidateGenerator, *args: object, **kwargs: object) -> object:
        iterations.append(1)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patch, torch.inference_mode():
        patch.setattr(AssistedCandidateGenerator, "get_candidates", counted)
        once = generation.generation_for("hf-assisted", cache, draft=model)(
            model, runner.workload(model, variant), None
        )
    assert once.speculation is not None and once.speculation.verify_steps == len(iterations) == once.steps
    result = runner.run(variant)
    assert result.parity is not None and result.parity.ok, str(result.parity)
    spec = result.output.speculation
    assert spec is not None and spec.proposed > 0 and spec.accepted == spec.proposed and spec.draft_steps > 0
    rec = result.record()
    assert rec["acceptance_rate"] == 1.0 and rec["mean_accepted_length"] > 1.0
    # the draft is the model: a draft step reads what a verify step reads, give or take the tokens it carries
    assert rec["draft_bytes_per_step"] == pytest.approx(rec["bytes_per_step"], rel=0.05)
    assert "a step is a verify step" in rec["note"] and result.variant.id.endswith("-draft-self")


def test_a_draft_that_disagrees_costs_acceptance_never_tokens(runner: Runner) -> None:
    runner.use_draft("stranger", stranger())
    result = runner.run(Variant("tiny-gpt2", "dynamic", "hf-assisted", 1, NEW, draft="stranger"))
    assert result.parity is not None and result.parity.ok, str(result.parity)
    spec = result.output.speculation
    assert spec is not None and spec.proposed > 0 and (spec.acceptance_rate or 0.0) < 0.5


def test_a_speculative_mode_whose_tokens_differ_fails_parity_naming_row_and_position(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault put where a broken verifier would put it: one token of the generation changed."""
    real = generation.GenerateGeneration.run

    def changed(self: generation.GenerateGeneration, call: generation.Call) -> generation.DecodeOutput:
        out = real(self, call)
        if self.name == "hf-assisted":
            tokens = out.tokens.clone()
            tokens[0, out.prompt_len + 2] = (tokens[0, out.prompt_len + 2] + 1) % 2048
            out = replace(out, tokens=tokens)
        return out

    monkeypatch.setattr(generation.GenerateGeneration, "run", changed)
    result = Runner("cpu", rounds=1, warmup=0).run(
        Variant("tiny-gpt2", "dynamic", "hf-assisted", 1, NEW, draft="tiny-gpt2")
    )
    assert result.parity is not None and not result.parity.ok
    assert "row 0: first divergence at generated position 2" in str(result.parity)


@pytest.mark.parametrize(
    ("variant", "fragment"),
    [
        (Variant("tiny-gpt2", "dynamic", "hf-prompt-lookup", 2, 8), "runs one row at a time (batch_size=1); got 2"),
        (Variant("tiny-gpt2", "none", "hf-prompt-lookup", 1, 8), "needs a cache to crop what it rejects (cache=none)"),
        (Variant("tiny-gpt2", "dynamic", "hf-assisted", 1, 8), "'hf-assisted' needs a draft model: draft=..."),
    ],
)
def test_what_speculative_generate_cannot_run_is_refused_in_one_line(variant: Variant, fragment: str) -> None:
    with pytest.raises(DecodePerfError) as caught:
        variant.validate("cpu")
    assert "\n" not in str(caught.value) and fragment in str(caught.value)
