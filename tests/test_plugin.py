"""The pytest plugin end to end: each test writes a small project with ``pytester`` and runs pytest on it.

Inner runs are subprocesses (the plugin imports torch and transformers, about 4 s each), on the tiny CPU
model with 8 new tokens, 2 rounds and no warmup; checks that can share a run share it. Only the bad option
values, which stop at a usage error in ``pytest_configure`` before anything is decoded, run in this process.
Runs go through the ``run_decodeperf`` fixture (tests/conftest.py), which adds the fast settings.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

# before any in-process run: pytester's module snapshot would drop the transformers model modules a first
# import loads inside one, and the next run could not import them again
import pytest_decodeperf.engine.spec.models  # noqa: F401
from pytest_decodeperf.marker import SIGNATURE
from pytest_decodeperf.options import OPTIONS

Run = Callable[..., pytest.RunResult]

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of CUDA-only options on CPU")

# A user's own model, built from their own config (not a zoo model), under the labels the marker names.
MY_MODEL_CONFTEST = """
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel


@pytest.fixture
def decode_model(decode_variant):
    config = GPT2Config(
        vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).eval()
"""

# The same model left in train mode with heavy dropout: no two generations give the same tokens.
DROPOUT_MODEL_CONFTEST = """
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel


@pytest.fixture
def decode_model(decode_variant):
    config = GPT2Config(
        vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, resid_pdrop=0.5, attn_pdrop=0.5, embd_pdrop=0.5,
    )
    torch.manual_seed(0)  # the dropout masks follow the global generator: the run is repeatable
    return GPT2LMHeadModel(config).train()
"""

# The zoo model, counting every forward call, so a second (hidden) decode run would show.
COUNTING_CONFTEST = """
import pytest
from pytest_decodeperf import build_model

FORWARD_CALLS = []


@pytest.fixture
def decode_model(decode_variant):
    model = build_model(decode_variant.model)
    model.register_forward_hook(lambda module, args, output: FORWARD_CALLS.append(1))
    return model


def pytest_sessionfinish(session):
    with open("forward_calls.txt", "w") as fh:
        fh.write(str(len(FORWARD_CALLS)))
"""


def collected_ids(result: pytest.RunResult) -> list[str]:
    """The node ids printed by ``--collect-only -q``."""
    return [line.strip() for line in result.outlines if "::" in line and not line.startswith(" ")]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --- on and off ---------------------------------------------------------------------------------------

ON_AND_OFF = """
import pytest


@pytest.mark.decode_perf(stream=("baseline", "pipelined"), new_tokens=8)
def test_empty_body():
    pass


@pytest.mark.decode_perf(cache="static", stream=("baseline", "pipelined"), new_tokens=8)
def test_asserts_on_the_result(decode_result, decode_variant, cache_type, stream_mode):
    assert cache_type == decode_variant.cache == "static"
    assert stream_mode == decode_variant.stream
    record = decode_result.record()
    assert record["tokens_per_s"] > 0
    assert (record["cache"], record["stream"], record["new_tokens"]) == (cache_type, stream_mode, 8)
    assert decode_result.parity.ok  # every mode, baseline included, is held to transformers' generate()
    print(f"FIXTURES cache_type={cache_type} stream_mode={stream_mode}")


def test_unmarked():
    pass
"""


def test_marked_tests_are_skipped_with_a_reason_without_the_flag(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    pytester.makepyfile(test_on_off=ON_AND_OFF)
    result = run_decodeperf("-rs", enable=False)
    result.assert_outcomes(passed=1, skipped=4)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]2[]] test_on_off.py:*: decode perf tests need --decodeperf",
            "SKIPPED [[]2[]] test_on_off.py:*: decode perf tests need --decodeperf",
        ]
    )
    result.stdout.no_fnmatch_line("*= decode perf =*")


def test_with_the_flag_marked_tests_run_pass_and_print_the_summary_table(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    """An empty body lets the plugin run the variant; a body may also assert on the result and parameters."""
    pytester.makepyfile(test_on_off=ON_AND_OFF)
    result = run_decodeperf("-s")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        ["*FIXTURES cache_type=static stream_mode=baseline*", "*FIXTURES cache_type=static stream_mode=pipelined*"]
    )
    result.stdout.fnmatch_lines(
        [
            "*= decode perf =*",
            "pytest-decodeperf on cpu: 4 variants;*",
            "model *cache *stream *batch *new *tok/s *spread *ms/token *prefill ms *steps *vs baseline *parity",
            "test_on_off.py::test_empty_body  (stop=eos)",
            "tiny-gpt2 *dynamic *baseline *1 *8 *1.000x* *pass*",
            "tiny-gpt2 *dynamic *pipelined *1 *8 *x* *pass*",
            "test_on_off.py::test_asserts_on_the_result  (stop=eos)",
            "tiny-gpt2 *static *baseline *1 *8 *1.000x* *pass*",
            "tiny-gpt2 *static *pipelined *1 *8 *x* *pass*",
        ]
    )


# --- the matrix and its narrowing ---------------------------------------------------------------------

MATRIX = """
import pytest


@pytest.mark.decode_perf(
    cache=("dynamic", "static"), stream=("baseline", "pipelined"), batch_size=(1, 2), new_tokens=8
)
def test_gen():
    pass
"""


def test_the_marker_expands_to_its_full_matrix_with_readable_ids(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    pytester.makepyfile(test_matrix=MATRIX)
    result = run_decodeperf("--collect-only", "-q", enable=False)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["8 tests collected*"])
    assert sorted(collected_ids(result)) == sorted(
        f"test_matrix.py::test_gen[tiny-gpt2-{cache}-{stream}-b{batch}]"
        for cache in ("dynamic", "static")
        for stream in ("baseline", "pipelined")
        for batch in (1, 2)
    )


def test_cache_and_stream_options_deselect_the_rest_of_the_matrix(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    pytester.makepyfile(test_matrix=MATRIX)
    result = run_decodeperf(
        "--collect-only", "-q", "--decodeperf-caches=static", "--decodeperf-streams=pipelined", enable=False
    )
    assert result.ret == 0
    result.stdout.fnmatch_lines(["2/8 tests collected (6 deselected)*"])
    assert collected_ids(result) == [
        "test_matrix.py::test_gen[tiny-gpt2-static-pipelined-b1]",
        "test_matrix.py::test_gen[tiny-gpt2-static-pipelined-b2]",
    ]


def test_model_batch_size_and_length_options_narrow_and_override_the_marker(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    pytester.makepyfile(
        test_models="""
        import pytest


        @pytest.mark.decode_perf(
            models=("tiny-gpt2", "tiny-llama-gqa"), stream="baseline", batch_size=(1, 2), new_tokens=16
        )
        def test_gen():
            pass
        """
    )
    result = run_decodeperf(
        "--decodeperf-models=tiny-gpt2",
        "--decodeperf-batch-sizes=2",
        "--decodeperf-new-tokens=4",
        "--decodeperf-json=out.json",
    )
    result.assert_outcomes(passed=1, deselected=3)
    (record,) = read_json(pytester.path / "out.json")["results"]
    assert record["test"] == "test_models.py::test_gen[tiny-gpt2-dynamic-baseline-b2]"
    assert (record["model"], record["batch_size"], record["new_tokens"]) == ("tiny-gpt2", 2, 4)
    assert record["steps"] <= 4


def test_narrowing_comes_from_the_command_line_then_the_environment_then_the_ini_file(
    pytester: pytest.Pytester, run_decodeperf: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three options, three layers: caches from the ini file alone, streams where the environment overrides
    the ini file, batch sizes where the command line overrides both; exactly one item survives."""
    pytester.makeini(
        """
        [pytest]
        decodeperf_caches = static
        decodeperf_streams = pipelined
        decodeperf_batch_sizes = 2
        """
    )
    monkeypatch.setenv("DECODEPERF_STREAMS", "baseline")
    monkeypatch.setenv("DECODEPERF_BATCH_SIZES", "2")
    pytester.makepyfile(test_matrix=MATRIX)
    result = run_decodeperf("--collect-only", "-q", "--decodeperf-batch-sizes=1", enable=False)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["1/8 tests collected (7 deselected)*"])
    assert collected_ids(result) == ["test_matrix.py::test_gen[tiny-gpt2-static-baseline-b1]"]


# --- bad input: one line, naming the value and where it came from --------------------------------------

ONE_TEST = """
import pytest


@pytest.mark.decode_perf(stream="baseline", new_tokens=8)
def test_gen():
    pass
"""


def assert_one_usage_error_line(result: pytest.RunResult, *fragments: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    lines = [line for line in result.errlines if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("ERROR: pytest-decodeperf: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize(
    ("ini", "args", "fragments"),
    [
        pytest.param(
            None,
            ["--decodeperf-caches=bogus"],
            ["unknown cache type 'bogus'", "(from command line --decodeperf-caches)"],
            id="cache-on-the-command-line",
        ),
        pytest.param(
            "decodeperf_caches = bogus",
            [],
            ["unknown cache type 'bogus'", "(from decodeperf_caches in tox.ini)"],
            id="cache-in-the-ini-file",
        ),
        pytest.param(
            None,
            ["--decodeperf-rounds=abc"],
            ["rounds must be an integer, got 'abc'", "(from command line --decodeperf-rounds)"],
            id="rounds",
        ),
        pytest.param(
            None,
            ["--decodeperf-models=gpt5"],
            ["unknown model 'gpt5'", "choose from: gpt2,", "(from command line --decodeperf-models)"],
            id="model-name-typo",
        ),
        pytest.param(
            None,
            ["--decodeperf-batch-sizes=0"],
            ["batch size must be >= 1, got 0", "(from command line --decodeperf-batch-sizes)"],
            id="batch-size",
        ),
        pytest.param(
            None,
            ["--decodeperf-profile-steps=5:2"],
            ["'5:2'", "(from command line --decodeperf-profile-steps)"],
            id="backwards-profile-window",
        ),
        pytest.param(
            None,
            ["--decodeperf-json=/nonexistent/dir/x.json"],
            ["'/nonexistent/dir' does not exist", "(from command line --decodeperf-json)"],
            id="json-in-a-missing-directory",
        ),
        pytest.param(
            None,
            ["--decodeperf-markdown=/nonexistent/dir/x.md"],
            ["'/nonexistent/dir' does not exist", "(from command line --decodeperf-markdown)"],
            id="markdown-in-a-missing-directory",
        ),
        pytest.param(
            None,
            ["--decodeperf-device=cuda"],
            ["device 'cuda'", "no CUDA device"],
            marks=NO_CUDA,
            id="cuda-device-on-cpu",
        ),
        pytest.param(
            None,
            ["--decodeperf-profile-steps=1:3"],
            ["--decodeperf-profile-steps needs CUDA", "this run is on cpu"],
            marks=NO_CUDA,
            id="profile-window-on-cpu",
        ),
    ],
)
def test_a_bad_option_value_is_one_line_naming_the_value_and_its_source(
    pytester: pytest.Pytester, run_decodeperf: Run, ini: str | None, args: list[str], fragments: list[str]
) -> None:
    if ini is not None:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_one=ONE_TEST)
    result = run_decodeperf(*args, inprocess=True)
    assert_one_usage_error_line(result, *fragments)


@NO_CUDA
def test_a_cuda_device_from_the_environment_is_refused_naming_the_environment_variable(
    pytester: pytest.Pytester, run_decodeperf: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    monkeypatch.setenv("DECODEPERF_DEVICE", "cuda")
    result = run_decodeperf(fast=False, inprocess=True)
    assert_one_usage_error_line(result, "device 'cuda'", "(from environment variable DECODEPERF_DEVICE)")


def test_bad_marker_arguments_fail_collection_with_one_line_each(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    marked = "import pytest\n\n\n@pytest.mark.decode_perf({})\ndef test_gen():\n    pass\n"
    pytester.makepyfile(
        test_bad_keyword=marked.format('cahce="static"'),
        test_bad_stream=marked.format('stream="bogus"'),
        test_bad_batch=marked.format("batch_size=0"),
    )
    result = run_decodeperf()
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        [
            "test_bad_batch.py::test_gen: batch_size must be an integer >= 1, got 0",
            "test_bad_keyword.py::test_gen: unknown decode_perf keyword(s) 'cahce'; allowed: models, cache, *",
            "test_bad_stream.py::test_gen: unknown stream mode 'bogus'; choose from: *baseline*",
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


# --- a user's own model ---------------------------------------------------------------------------------


def test_a_users_own_decode_model_runs_under_its_label(pytester: pytest.Pytester, run_decodeperf: Run) -> None:
    pytester.makeconftest(MY_MODEL_CONFTEST)
    pytester.makepyfile(
        test_mine="""
        import pytest


        @pytest.mark.decode_perf(models=("my-model",), stream=("baseline", "pipelined"), new_tokens=8)
        def test_gen(decode_model, decode_result):
            assert decode_model.config.vocab_size == 300
            assert decode_result.variant.model == "my-model"
        """
    )
    result = run_decodeperf("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "test_mine.py::test_gen[[]my-model-dynamic-baseline-b1[]] PASSED*",
            "test_mine.py::test_gen[[]my-model-dynamic-pipelined-b1[]] PASSED*",
            "model *cache *stream *batch*",
            "my-model *dynamic *baseline *1 *8 *pass*",
            "my-model *dynamic *pipelined *1 *8 *pass*",
        ]
    )


def test_a_users_own_model_label_works_with_an_empty_test_body(pytester: pytest.Pytester, run_decodeperf: Run) -> None:
    pytester.makeconftest(MY_MODEL_CONFTEST)
    pytester.makepyfile(
        test_mine="""
        import pytest


        @pytest.mark.decode_perf(models=("my-model",), stream=("baseline", "pipelined"), new_tokens=8)
        def test_gen():
            pass
        """
    )
    result = run_decodeperf()
    result.assert_outcomes(passed=2)


def test_the_models_option_narrows_to_a_users_own_model_labels(pytester: pytest.Pytester, run_decodeperf: Run) -> None:
    pytester.makeconftest(MY_MODEL_CONFTEST)
    pytester.makepyfile(
        test_mine="""
        import pytest


        @pytest.mark.decode_perf(models=("my-model", "my-other-model"), stream="baseline", new_tokens=8)
        def test_gen(decode_result):
            pass
        """
    )
    result = run_decodeperf("--collect-only", "-q", "--decodeperf-models=my-model")
    assert result.ret == 0, result.stderr.str()
    assert collected_ids(result) == ["test_mine.py::test_gen[my-model-dynamic-baseline-b1]"]


def test_a_model_that_diverges_fails_parity_with_the_divergence_report(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    pytester.makeconftest(DROPOUT_MODEL_CONFTEST)
    pytester.makepyfile(
        test_dropout="""
        import pytest


        @pytest.mark.decode_perf(models=("dropout-model",), stream=("baseline", "pipelined"), new_tokens=8)
        def test_gen(decode_result):
            pass
        """
    )
    result = run_decodeperf("-v")
    # Dropout left on: generate() itself gives other tokens, so the baseline fails too (it used to pass,
    # compared only with itself).
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "test_dropout.py::test_gen[[]dropout-model-dynamic-baseline-b1[]] FAILED*",
            "test_dropout.py::test_gen[[]dropout-model-dynamic-pipelined-b1[]] FAILED*",
            "*= FAILURES =*",
            "parity FAILED: dropout-model-dynamic-baseline-b1 differs from transformers generate() in 1 row(s)*",
            "  row 0: first divergence at generated position *: expected *, got * (lengths: expected *, got *), "
            "logit margin *: a confident disagreement",
        ]
    )
    result.stdout.fnmatch_lines(["dropout-model *dynamic *pipelined *fail*"])
    assert "Traceback" not in result.stdout.str()


# --- results: JSON, pytest-benchmark, xdist ---------------------------------------------------------------

RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "test": (str,),
    "model": (str,),
    "cache": (str,),
    "stream": (str,),
    "batch_size": (int,),
    "new_tokens": (int,),
    "device": (str,),
    "parity": (str,),
    "tokens_per_s": (float,),
    "ms_per_token": (float,),
    "prefill_ms": (float, type(None)),
    "steps": (int,),
    "peak_allocated_bytes": (int, type(None)),
    "peak_reserved_bytes": (int, type(None)),
    "rounds": (int,),
    "samples_s": (list,),
}


def test_the_json_report_has_the_documented_schema(pytester: pytest.Pytester, run_decodeperf: Run) -> None:
    pytester.makepyfile(
        test_json="""
        import pytest


        @pytest.mark.decode_perf(stream=("baseline", "pipelined"), batch_size=(1, 2), new_tokens=8)
        def test_gen():
            pass
        """
    )
    result = run_decodeperf("--decodeperf-json=out.json")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["decode perf results written to out.json"])
    report = read_json(pytester.path / "out.json")
    assert set(report) == {"machine", "results"}
    machine = report["machine"]
    assert machine["torch"] == torch.__version__
    assert machine["transformers"] == transformers.__version__
    assert machine["device"] == "cpu"
    records = report["results"]
    assert len(records) == 4
    for rec in records:
        for key, types in RECORD_TYPES.items():
            assert isinstance(rec[key], types), (key, rec[key])
            assert not isinstance(rec[key], bool), (key, rec[key])
        assert rec["test"] == f"test_json.py::test_gen[tiny-gpt2-dynamic-{rec['stream']}-b{rec['batch_size']}]"
        assert (rec["model"], rec["cache"], rec["new_tokens"], rec["device"]) == ("tiny-gpt2", "dynamic", 8, "cpu")
        assert rec["parity"] == "pass"
        assert rec["tokens_per_s"] > 0 and rec["steps"] >= 1
        assert rec["rounds"] == 2
        assert len(rec["samples_s"]) == rec["rounds"]
        assert all(isinstance(s, float) and s > 0 for s in rec["samples_s"])
    assert sorted((r["stream"], r["batch_size"]) for r in records) == [
        ("baseline", 1),
        ("baseline", 2),
        ("pipelined", 1),
        ("pipelined", 2),
    ]


def test_the_json_report_is_valid_json_when_a_variant_has_no_decode_step(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    pytester.makepyfile(
        test_one_token="""
        import pytest


        @pytest.mark.decode_perf(stream="baseline", new_tokens=1, stop="none")
        def test_gen():
            pass
        """
    )
    result = run_decodeperf("--decodeperf-json=out.json")
    result.assert_outcomes(passed=1)

    def refuse(constant: str) -> float:
        raise ValueError(f"{constant} is not JSON")

    report = json.loads((pytester.path / "out.json").read_text(encoding="utf-8"), parse_constant=refuse)
    assert report["results"][0]["ms_per_token"] is None


def test_pytest_benchmark_gets_the_measured_rounds_without_a_second_decode(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    pytester.makeconftest(COUNTING_CONFTEST)
    pytester.makepyfile(
        test_bench="""
        import pytest


        @pytest.mark.decode_perf(models="tiny-gpt2", stream="baseline", stop="none", batch_size=(1, 2), new_tokens=8)
        def test_gen(decode_result):
            pass
        """
    )
    result = run_decodeperf(
        "--decodeperf-rounds=3", "--benchmark-json=bench.json", "--decodeperf-json=out.json", benchmark=True
    )
    result.assert_outcomes(passed=2)
    assert "Name (time in" not in result.stdout.str()  # its table repeats ours: only on request
    records = {r["test"].split("::")[-1]: r for r in read_json(pytester.path / "out.json")["results"]}
    benchmarks = read_json(pytester.path / "bench.json")["benchmarks"]
    assert sorted(b["name"] for b in benchmarks) == sorted(records)
    for bench in benchmarks:
        record = records[bench["name"]]
        assert bench["stats"]["rounds"] == 3 == record["rounds"]
        assert bench["stats"]["data"] == record["samples_s"]  # the plugin's own rounds, not new ones
        assert bench["extra_info"]["tokens_per_s"] == record["tokens_per_s"]
        assert bench["extra_info"]["parity"] == "pass"
        assert bench["extra_info"]["stream"] == "baseline"
    # warmup 0, stop="none": each item decodes rounds x steps forward passes, plus two untimed
    # generations (the sync count, and transformers' generate() as the parity reference), plus the
    # cache probe's 4 forwards once per model object (this conftest builds one per item); nothing for
    # pytest-benchmark.
    forward_calls = int((pytester.path / "forward_calls.txt").read_text())
    assert forward_calls == sum((r["rounds"] + 2) * r["steps"] + 4 for r in records.values())


def test_pytest_benchmarks_table_is_printed_on_request_and_its_checks_always_run(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    result = run_decodeperf("--decodeperf-benchmark-table", benchmark=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*decode perf*", "*Name (time in *"])
    # quiet by default, yet its regression check still runs: a compare-fail without a compare is its usage error
    result = run_decodeperf("--benchmark-compare-fail=min:5%", benchmark=True)
    assert "--benchmark-compare-fail requires valid --benchmark-compare" in result.stdout.str() + result.stderr.str()


def test_benchmark_only_runs_the_decode_perf_items(pytester: pytest.Pytester, run_decodeperf: Run) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    result = run_decodeperf("--benchmark-only", "-rs", benchmark=True)
    result.assert_outcomes(passed=1)


def test_records_of_all_xdist_workers_are_merged_into_one_json_file(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    pytester.makepyfile(test_matrix=MATRIX)
    result = run_decodeperf("-n", "2", "-p", "xdist", "-v", "--decodeperf-json=out.json")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*[[]gw0[]]*PASSED*"])
    result.stdout.fnmatch_lines(["*[[]gw1[]]*PASSED*"])
    result.stdout.fnmatch_lines(["pytest-decodeperf on cpu: 8 variants;*"])
    records = read_json(pytester.path / "out.json")["results"]
    assert len(records) == 8
    assert len({r["test"] for r in records}) == 8
    assert all(r["parity"] in ("n/a", "pass") and not math.isnan(r["tokens_per_s"]) for r in records)


# --- documentation --------------------------------------------------------------------------------------


def test_help_lists_every_option_in_a_decode_performance_group_with_its_ini_twin(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    result = run_decodeperf("--help", enable=False, benchmark=True, fast=False)
    assert result.ret == 0
    out = result.stdout.str()
    group = out.split("decode performance (pytest-decodeperf):\n", 1)[1].split("\n\n", 1)[0]
    for spec in OPTIONS:
        assert re.search(rf"^  {re.escape(spec.flag_name)}([= ]|$)", group, re.MULTILINE), spec.flag_name
    ini_section = out.split("[pytest] configuration options", 1)[1]
    for spec in OPTIONS:
        assert f"  {spec.dest} (string):" in ini_section, spec.dest
    result.stdout.fnmatch_lines(["  --decodeperf-caches=NAMES", "*comma list of cache types*"])


def test_markers_documents_the_full_decode_perf_signature(pytester: pytest.Pytester, run_decodeperf: Run) -> None:
    result = run_decodeperf("--markers", enable=False, benchmark=True, fast=False)
    assert result.ret == 0
    signature = ", ".join(f"{name}={param.default!r}" for name, param in SIGNATURE.parameters.items())
    assert signature.startswith("models=None, cache=('dynamic',), stream=('baseline', 'pipelined'), ")
    result.stdout.fnmatch_lines([f"@pytest.mark.decode_perf({signature}): measure token generation*--decodeperf."])


def test_the_attn_option_doubles_every_row_and_each_item_gets_a_model_running_its_kernel(
    pytester: pytest.Pytester, run_decodeperf: Run
) -> None:
    pytester.makepyfile(
        test_kernels="""
        import pytest


        @pytest.mark.decode_perf(stream=("baseline", "pipelined"), new_tokens=8)
        def test_gen(decode_model, decode_variant):
            assert decode_model.config._attn_implementation == decode_variant.attn
        """
    )
    result = run_decodeperf("-v", "--decodeperf-attn=sdpa,eager", "--decodeperf-json=out.json")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "test_kernels.py::test_gen[[]tiny-gpt2-dynamic-baseline-b1-sdpa[]] PASSED*",
            "test_kernels.py::test_gen[[]tiny-gpt2-dynamic-pipelined-b1-eager[]] PASSED*",
            "tiny-gpt2 attn=eager *dynamic *baseline *1 *4 *8 *pass*",  # each kernel a group with its baseline
            "tiny-gpt2 attn=eager *dynamic *pipelined *1 *4 *8 *pass*",
            "tiny-gpt2 attn=sdpa *dynamic *baseline *1 *4 *8 *pass*",
            "tiny-gpt2 attn=sdpa *dynamic *pipelined *1 *4 *8 *pass*",
        ]
    )
    records = read_json(pytester.path / "out.json")["results"]
    assert sorted(r["attn"] for r in records) == ["eager", "eager", "sdpa", "sdpa"]
