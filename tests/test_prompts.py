"""Realistic workloads: prompt lengths, left-padded mixed batches, saved checkpoints and text prompts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from engine_fixtures import tiny_model  # noqa: F401
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast
from transformers.masking_utils import sdpa_mask

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.decode.masks import PaddedBatch, left_pad
from pytest_decodeperf.engine.spec.models import build_model, check_model_name, load_checkpoint
from pytest_decodeperf.engine.spec.workload import corpus_lines, make_workload, mixed_lengths
from pytest_decodeperf.errors import DecodePerfError

Run = Callable[..., pytest.RunResult]
VOCAB = 384


def test_mixed_rows_spread_from_the_full_length_down_to_a_quarter() -> None:
    assert mixed_lengths(4, 16) == [16, 12, 8, 4]
    assert mixed_lengths(1, 16) == [16]
    assert min(mixed_lengths(8, 2)) == 1 and max(mixed_lengths(8, 2)) == 2


def test_left_padding_puts_every_rows_last_token_in_the_last_column() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_the_ready_mask_is_transformers_own_mask_from_the_same_padding() -> None:
    """The 4-D mask the loop slices per step allows exactly what transformers' sdpa_mask allows."""
    _, mask = left_pad([[5, 6, 7, 8], [9, 10], [11, 12, 13]], pad_id=0)
    total = 7
    batch = PaddedBatch(mask, total, total, ready=True, dtype=torch.float32, positions=True)
    ours = batch.forward_kwargs(0, total, total)["attention_mask"]
    theirs = sdpa_mask(
        batch_size=3, q_length=total, kv_length=total, attention_mask=batch.mask2d.bool(), allow_is_causal_skip=False
    )
    assert theirs is not None
    real = batch.mask2d.bool()[:, :, None]  # rows of padding queries attend to nothing in ours: no output is read
    assert torch.equal((ours == 0)[:, 0] & real, theirs[:, 0] & real)
    # each step's row is that row of the whole mask: one query, every key seen so far (dynamic: a view of
    # the padding bias) or every key of a preallocated cache, the ones past the query masked (static)
    assert torch.equal(batch.forward_kwargs(5, 6, 6)["attention_mask"], ours[:, :, 5:6, :6])
    static = PaddedBatch(mask, total, total + 3, ready=True, dtype=torch.bfloat16, positions=True)
    whole = static.forward_kwargs(0, total, total + 3)["attention_mask"]
    assert static.step_rows is not None  # a decode step's mask is a view: no kernel, no allocation in the step
    step_mask = static.forward_kwargs(5, 6, total + 3)["attention_mask"]
    assert step_mask.untyped_storage().data_ptr() == static.step_rows.untyped_storage().data_ptr()
    for step in range(4, total):
        assert torch.equal(
            static.forward_kwargs(step, step + 1, total + 3)["attention_mask"], whole[:, :, step : step + 1]
        )
    # generate()'s positions: counted from each row's first real token
    assert batch.positions is not None
    assert batch.positions[1].tolist() == [0, 0, 0, 1, 2, 3, 4]
    # a decode step's slice: one query, every key seen so far
    step = batch.forward_kwargs(5, 6, 6)
    assert step["attention_mask"].shape == (3, 1, 1, 6) and step["position_ids"].tolist() == [[5], [3], [4]]


def test_a_mixed_workload_has_padded_rows_and_keeps_their_real_lengths(tiny_model: PreTrainedModel) -> None:
    w = make_workload(tiny_model, 4, 8, "none", prompt_len=16, prompts="mixed")
    assert w.prompt_lengths == (16, 12, 8, 4)
    assert w.attention_mask is not None and w.prompts.shape == (4, 16)
    assert bool((w.prompts[3, :12] == w.pad_id).all())


def test_dropping_the_mask_breaks_parity_with_generate(
    monkeypatch: pytest.MonkeyPatch, tiny_model: PreTrainedModel
) -> None:
    """The parity test of mixed batches can fail: a loop that ignores the padding attends to pad tokens."""
    runner = Runner("cpu", rounds=1, warmup=0)
    variant = Variant("tiny-gpt2", "dynamic", "baseline", 4, 8, stop="none", prompt_len=16, prompts="mixed")
    assert runner.run(variant, tiny_model).parity.ok  # type: ignore[union-attr]
    monkeypatch.setattr(PaddedBatch, "forward_kwargs", lambda self, start, end, kv: {})
    broken = Runner("cpu", rounds=1, warmup=0).run(variant, tiny_model).parity
    assert broken is not None and not broken.ok
    assert "confident disagreement" in str(broken)


# --- saved checkpoints and text prompts ----------------------------------------------------


def train_tokenizer(vocab: int = 300, bos: bool = False) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on the shipped corpus, on the fly (no hub); ``bos``: it puts <bos> before a text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    specials = ["<pad>", "<eos>", "<unk>", "<bos>"]
    tok.train_from_iterator(corpus_lines(), trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials))
    if bos:
        tok.post_processor = processors.TemplateProcessing(  # type: ignore[assignment]
            single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", bos_token="<bos>"
    )


def save_checkpoint(path: Path, vocab: int = VOCAB, tokenizer: bool = True) -> Path:
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
        initializer_range=0.3,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
    if tokenizer:
        train_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-llama-text")


def test_a_saved_checkpoint_decodes_text_prompts_from_its_own_tokenizer(checkpoint: Path) -> None:
    runner = Runner("cpu", rounds=1, warmup=0)
    variant = Variant(str(checkpoint), "dynamic", "pipelined", 2, 8, prompt_len=12, prompts="text")
    assert variant.id.startswith("tiny-llama-text-dynamic-pipelined-b2-p12text")
    result = runner.run(variant)
    assert result.parity is not None and result.parity.ok, str(result.parity)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoint)
    first = tokenizer.encode(corpus_lines()[0] + "\n", add_special_tokens=False)[:12]
    assert result.workload.prompts[0].tolist() == first  # row 0: the corpus's first line, cut at 12 tokens
    assert result.workload.prompt_lengths == (12, 3)
    assert result.record()["prompts"] == "text" and result.record()["prompt_lengths"] == [12, 3]


def test_a_tokenizers_bos_starts_a_text_prompt_once(tiny_model: PreTrainedModel) -> None:
    """A Llama-style tokenizer adds <bos> to every text it encodes: once per prompt, not before every line."""
    tokenizer = train_tokenizer(bos=True)
    bos = tokenizer.bos_token_id
    w = make_workload(tiny_model, 2, 4, "none", prompt_len=64, prompts="text", tokenizer=tokenizer)
    assert w.attention_mask is not None
    for row, mask in zip(w.prompts.tolist(), w.attention_mask.tolist(), strict=True):
        real = [t for t, m in zip(row, mask, strict=True) if m]
        assert real[0] == bos and bos not in real[1:]


def test_a_checkpoint_loads_in_the_dtype_asked_for(checkpoint: Path) -> None:
    assert build_model(str(checkpoint), dtype="bfloat16").dtype == torch.bfloat16


def test_a_checkpoint_that_needs_remote_code_is_refused_without_running_it(tmp_path: Path) -> None:
    ran = tmp_path / "remote-code-ran"
    ckpt = tmp_path / "remote"
    ckpt.mkdir()
    (ckpt / "modeling_evil.py").write_text(f"open({str(ran)!r}, 'w').write('ran')\n")
    (ckpt / "config.json").write_text(
        json.dumps({"model_type": "evil", "auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilModel"}})
    )
    with pytest.raises(DecodePerfError, match=r"^checkpoint .*remote.* does not load as a causal LM: ") as info:
        load_checkpoint(str(ckpt))
    assert "\n" not in str(info.value)
    assert not ran.exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("./no/such/dir", r"no such checkpoint directory"),
        ("tiny-gtp2", r"unknown model 'tiny-gtp2'"),
    ],
)
def test_a_model_that_is_neither_a_zoo_name_nor_a_checkpoint_is_one_line(name: str, message: str) -> None:
    with pytest.raises(DecodePerfError, match=message):
        check_model_name(name)


def test_text_prompts_need_a_tokenizer_beside_the_checkpoint(tmp_path: Path, tiny_model: PreTrainedModel) -> None:
    with pytest.raises(DecodePerfError, match=r"prompts='text' needs a tokenizer beside the checkpoint"):
        Runner("cpu").workload(tiny_model, Variant("tiny-gpt2", prompts="text"))
    bare = save_checkpoint(tmp_path / "bare", tokenizer=False)
    with pytest.raises(DecodePerfError, match=r"needs a tokenizer"):
        Runner("cpu").run(Variant(str(bare), prompts="text", new_tokens=4))


def test_text_prompts_on_a_zoo_model_fail_at_collection() -> None:
    from pytest_decodeperf.marker import parse_marker

    with pytest.raises(DecodePerfError, match=r"prompts='text' needs a checkpoint with its tokenizer; 'tiny-gpt2' is"):
        parse_marker((), {"prompts": "text"}, "tiny-gpt2", custom_model=False)


def test_a_checkpoint_with_corrupt_weights_is_one_line(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "corrupt", tokenizer=False)
    (weights,) = ckpt.glob("*.safetensors")
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(DecodePerfError, match=r"^checkpoint .*corrupt.* does not load as a causal LM: ") as info:
        load_checkpoint(str(ckpt))
    assert "\n" not in str(info.value)


def test_a_tokenizer_with_ids_past_the_vocabulary_is_one_line(tmp_path: Path) -> None:
    small = load_checkpoint(str(save_checkpoint(tmp_path / "small", vocab=64, tokenizer=False)))
    with pytest.raises(DecodePerfError, match=r"gives id \d+, but the model's vocabulary holds 64 ids"):
        make_workload(small, 2, 4, prompt_len=16, prompts="text", tokenizer=train_tokenizer())


# --- the plugin: the prompt axis, --decodeperf-model-path, --decodeperf-dtype ---------------

AXIS = """
import pytest

@pytest.mark.decode_perf(stream="baseline", batch_size=2, new_tokens=4, prompt_lens=(4, 16, "mixed"))
def test_gen(decode_result):
    assert decode_result.parity.ok
"""


def test_the_prompt_axis_expands_with_ids_and_the_option_overrides_it(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    pytester.makepyfile(test_axis=AXIS)
    result = run_decodeperf("--collect-only", "-q", inprocess=True)
    ids = sorted(line for line in result.outlines if "::" in line)
    assert ids == [
        "test_axis.py::test_gen[tiny-gpt2-dynamic-baseline-b2-p16]",
        "test_axis.py::test_gen[tiny-gpt2-dynamic-baseline-b2-p16mixed]",
        "test_axis.py::test_gen[tiny-gpt2-dynamic-baseline-b2]",
    ]
    result = run_decodeperf("--collect-only", "-q", "--decodeperf-prompt-lens=8,mixed", inprocess=True)
    assert sorted(line for line in result.outlines if "::" in line) == [
        "test_axis.py::test_gen[tiny-gpt2-dynamic-baseline-b2-p8]",
        "test_axis.py::test_gen[tiny-gpt2-dynamic-baseline-b2-p8mixed]",
    ]
    result = run_decodeperf("--decodeperf-prompt-lens=0", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*pytest-decodeperf: prompt length must be an integer >= 1 or 'mixed', got 0 (from command line*"]
    )


def test_prefill_is_reported_per_prompt_length(pytester: pytest.Pytester, run_decodeperf: Run) -> None:
    pytester.makepyfile(test_axis=AXIS)
    result = run_decodeperf()
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*note: prefill ms by prompt length (tiny-gpt2 dynamic b2, baseline): 4: *, 16: *, 16 mixed: *"]
    )


def test_a_checkpoint_path_replaces_the_default_model_in_the_given_dtype(
    pytester: pytest.Pytester, run_decodeperf: Run, checkpoint: Path
) -> None:
    pytester.makepyfile(
        test_ckpt="""
        import pytest

        @pytest.mark.decode_perf(stream=("baseline", "hf-generate"), batch_size=2, new_tokens=6, prompts="text",
                                 prompt_lens=10)
        def test_gen(decode_result):
            assert decode_result.parity.ok
        """
    )
    out = pytester.path / "out.json"
    result = run_decodeperf(
        f"--decodeperf-model-path={checkpoint}", "--decodeperf-dtype=bfloat16", f"--decodeperf-json={out}", "-v"
    )
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*test_gen?tiny-llama-text-dynamic-baseline-b2-p10text-bfloat16? PASSED*",
            "tiny-llama-text bfloat16  dynamic  baseline * 10 text *",  # the table: the directory's name, the dtype
        ]
    )
    records = json.loads(out.read_text())["results"]
    assert {(r["model"], r["dtype"], r["prompts"]) for r in records} == {(str(checkpoint), "bfloat16", "text")}
    result = run_decodeperf(f"--decodeperf-model-path={pytester.path / 'nothing'}", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-decodeperf: checkpoint '*nothing' is not a directory (from command line*"])
