"""Decoders of your own (``engine/decode/custom.py``): measured without their help, held to the same parity and
sync budget as the built-in modes, and refused in one line when they return something that is not tokens.

The decoders are in ``user_decoders.py``, written as a user would; the end-to-end run copies that file as the
conftest of a fresh project, where the plugin is what pytest loads.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import user_decoders

from pytest_decodeperf import DecodePerfError, Runner, Variant
from pytest_decodeperf.engine.decode.caches import CacheSlot, get_cache
from pytest_decodeperf.engine.decode.generation import DecoderError, generation_for
from pytest_decodeperf.engine.decode.hidden_syncs import no_padding_check
from pytest_decodeperf.engine.decode.stream_modes import check_stream_mode
from pytest_decodeperf.engine.device.sim_cuda import SimRuntime

torch.set_num_threads(1)
SOURCE = Path(user_decoders.__file__)
HERE = os.path.relpath(SOURCE)


def line_of(marker: str) -> int:
    return next(i for i, text in enumerate(SOURCE.read_text().splitlines(), 1) if marker in text)


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner("cpu", rounds=1, warmup=0)


@pytest.mark.parametrize(
    ("stream", "cache"),
    [("t-greedy", "none"), ("t-greedy", "dynamic"), ("t-greedy", "static"), ("t-pipelined", "dynamic")],
)
def test_a_correct_decoder_passes_parity_with_no_hidden_read_and_is_timed_by_its_forwards(
    runner: Runner, cache: str, stream: str
) -> None:
    """No cache too: a decoder's forward_kwargs give the ready causal mask the loop passes (without it
    transformers' masking reads the device every forward)."""
    result = runner.run(Variant("tiny-gpt2", cache, stream, 4, 24))
    assert result.parity is not None and result.parity.ok, str(result.parity)
    assert result.parity.reference == "transformers generate()"
    syncs = result.syncs
    assert syncs is not None and (syncs.max_hidden, syncs.declared_per_step, syncs.budget) == (0, 1.0, 0), syncs
    record = result.record()
    out = result.output
    # every forward is a step: the decode steps' latencies are timed from the hooks, the prefill apart
    assert (
        out.steps == out.new_tokens + (1 if stream == "t-pipelined" else 0)
        and out.extra_steps == out.steps - out.new_tokens
    )
    assert len(result.measurement.rounds[0].step_s) == out.steps - 1
    assert record["ttft_ms"] is not None and record["itl_p99_ms"] is not None and record["tokens_per_s"] > 0
    assert (
        record["stream"] == stream
        and f"decoder {stream!r} (" in record["note"]
        and "user_decoders.py:" in record["note"]
    )
    assert (
        record["bytes_per_step"] and record["vs_baseline"] is not None
    )  # roofline, and paired with the loop's baseline


def test_an_extra_blocking_read_in_a_decoder_fails_its_budget_at_the_decoders_line(runner: Runner) -> None:
    result = runner.run(Variant("tiny-gpt2", "dynamic", "t-extra-read", 2, 16))
    syncs = result.syncs
    assert syncs is not None and syncs.over_budget and syncs.max_hidden == 1 and syncs.declared_per_step == 1.0
    site = f"{HERE}:{line_of('THE HIDDEN READ')} _local_scalar_dense"
    assert any(s.startswith(site) for s in syncs.sites), syncs.sites
    assert site in syncs.message(result.variant.id)
    assert result.parity is not None and result.parity.ok  # right tokens, wrong cost


def test_an_off_by_one_decoder_fails_parity_with_row_position_and_tokens(runner: Runner) -> None:
    result = runner.run(Variant("tiny-gpt2", "dynamic", "t-off-by-one", 4, 24))
    assert result.parity is not None and not result.parity.ok
    text = str(result.parity)
    assert "parity FAILED: tiny-gpt2-dynamic-t-off-by-one-b4 differs from transformers generate()" in text
    assert "first divergence at generated position" in text and "got <end>" in text


@pytest.mark.parametrize(
    ("stream", "fragment"),
    [
        ("t-raises", f"decoder 't-raises' raised ValueError: my decoder broke ({HERE}:{line_of('THE RAISE')})"),
        ("t-with-prompt", "decoder 't-with-prompt' (tests/user_decoders.py:"),
        ("t-floats", "decoder 't-floats' (tests/user_decoders.py:"),
    ],
)
def test_a_decoder_that_raises_or_returns_no_tokens_fails_in_one_line(
    runner: Runner, stream: str, fragment: str
) -> None:
    with pytest.raises(DecodePerfError) as caught:
        runner.run(Variant("tiny-gpt2", "dynamic", stream, 2, 8))
    message = str(caught.value)
    assert "\n" not in message and fragment.replace("tests/", "") in message.replace("tests/", "")
    if stream == "t-with-prompt":
        assert "more than max_new_tokens=8" in message
    if stream == "t-floats":
        assert "torch.float32 tokens; token ids are integers" in message


def test_the_cuda_simulator_catches_a_decoder_that_launches_on_a_second_stream_without_waiting(runner: Runner) -> None:
    model = runner.model("tiny-gpt2")
    variant = Variant("tiny-gpt2", "dynamic", "t-pipelined", 3, 12)
    workload = runner.workload(model, variant)

    def simulated(stream: str) -> torch.Tensor:
        slot = CacheSlot(get_cache("dynamic"), model, 3, workload.prompt_len + 12)
        with torch.no_grad(), no_padding_check(model), SimRuntime() as sim:
            out = generation_for(stream, "dynamic")(model, workload, slot, runtime=sim)
            return out.tokens.clone()

    expected = runner.reference(model, variant, workload)
    assert torch.equal(simulated("t-pipelined")[:, workload.prompt_len :], expected)
    with pytest.raises(DecoderError, match="unsynchronized access"):
        simulated("t-no-wait")


def test_an_unknown_stream_names_the_registered_decoders() -> None:
    with pytest.raises(DecodePerfError, match="unknown stream mode 'my-lop'; choose from: .*t-greedy"):
        check_stream_mode("my-lop")


TEST = """
import pytest

@pytest.mark.decode_perf(cache="dynamic", stream=("baseline", "t-greedy", "t-extra-read", "t-off-by-one", "t-raises"),
                         batch_size=2, new_tokens=16)
def test_mine():
    pass

@pytest.mark.decode_perf(cache=("dynamic", "paged"), stream=("baseline", "hf-serve"), batch_size=2, new_tokens=8)
def test_served():
    pass
"""


def test_a_decoder_in_a_users_conftest_is_a_stream_mode_of_the_plugin_and_of_its_history(
    pytester: pytest.Pytester, run_decodeperf: object
) -> None:
    """A fresh project: the decoders in its conftest, a marker naming them; items fail one by one, each in one line,
    the rest run; the table has the decoder's row; ``--decodeperf-asv`` files it under its stream name."""
    pytester.makeconftest(SOURCE.read_text())
    pytester.makepyfile(test_mine=TEST)
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"],
    ):
        subprocess.run(["git", *args], cwd=pytester.path, check=True, capture_output=True)
    result = run_decodeperf("-rs", "--decodeperf-asv=results", "--decodeperf-json=out.json", "-p", "no:cacheprovider")  # type: ignore[operator]
    result.assert_outcomes(passed=4, failed=3, skipped=2)  # the product's two impossible pairs: skipped, saying why
    result.stdout.fnmatch_lines_random(
        [
            "tiny-gpt2-dynamic-t-extra-read-b2: 1 hidden blocking device read(s) in a decode step*"
            f"conftest.py:{line_of('THE HIDDEN READ')} _local_scalar_dense*",
            "*parity FAILED: tiny-gpt2-dynamic-t-off-by-one-b2 differs from transformers generate()*",
            f"*decoder 't-raises' raised ValueError: my decoder broke (conftest.py:{line_of('THE RAISE')})*",
            "tiny-gpt2 * dynamic * t-greedy * 2 * pass*",
            "tiny-gpt2 * paged * hf-serve * 2 * pass*",
            "SKIPPED*cache='paged' goes with stream='hf-serve'*",
        ]
    )
    records = {r["stream"]: r for r in json.loads((pytester.path / "out.json").read_text())["results"]}
    assert records["t-greedy"]["parity"] == "pass" and records["t-greedy"]["syncs_per_step"] == 0
    written = "".join(p.read_text() for p in (pytester.path / "results").rglob("*.json"))
    assert "'t-greedy'" in written


def test_decodeperf_run_takes_a_decoder_from_the_module_it_is_told_to_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_decodeperf.cli import main

    source = tmp_path / "mine.py"
    source.write_text(SOURCE.read_text().replace('"t-greedy"', '"cli-greedy"'))
    out = tmp_path / "out.json"
    args = ["run", "--decoders", str(source), "--streams", "baseline,cli-greedy", "--caches", "dynamic"]
    args += ["--batch-sizes", "2", "--new-tokens", "8", "--rounds", "1", "--max-time", "0", "--warmup", "0"]
    assert main([*args, "--device", "cpu", "--json", str(out)]) == 0
    records = json.loads(out.read_text())["results"]
    assert [r["stream"] for r in records] == ["baseline", "cli-greedy"] and records[1]["parity"] == "pass"
    assert main(["run", "--decoders", str(tmp_path / "missing.py"), "--device", "cpu"]) == 2
    assert "--decoders" in capsys.readouterr().err
