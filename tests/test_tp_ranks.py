"""Tensor parallel end to end on the CPU: two gloo ranks, started by the plugin and by torchrun.

One project: a tiny Llama (the zoo's, 8 query / 2 key-value heads, saved and loaded back sharded) and a Qwen2
GQA checkpoint saved with ``save_pretrained``, at tp=1 and tp=2, each item's tokens held to generate() by the
plugin and, in the test body (which runs in every rank), to the single-process generate() of the same weights;
an item whose body fails on rank 1 alone; an item during whose setup rank 1 dies (``os._exit``); one after it.
Kept short for CI's 2 cores: 6 new tokens, 2 rounds, no warmup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from pytest_decodeperf.engine.spec.models import INIT_RANGE

CONFTEST = """
import os

import pytest

from pytest_decodeperf.session import DecodePerfSession

WHO = os.environ.get("RANK", "session")
_write = DecodePerfSession.write_json


def write_json(self, path, ab=None):  # which process writes the results: rank 0 of a launch, or the session
    open(f"wrote-json-{WHO}", "w").close()
    _write(self, path, ab)


DecodePerfSession.write_json = write_json


@pytest.fixture(autouse=True)
def rank_1_dies(request):
    if request.node.name.startswith("test_rank_1_dies") and os.environ.get("RANK") == "1":
        os._exit(3)
"""

TESTS = """
import os

import pytest
import torch

from pytest_decodeperf import build_model
from pytest_decodeperf.engine.decode.hf_generate import hf_generate


@pytest.mark.decode_perf(models=("tiny-llama-gqa", "qwen2-gqa"), stream=("baseline", "pipelined"), new_tokens=6,
                         tp=(1, 2))
def test_sharded(decode_result, decode_variant):
    single = build_model(decode_variant.model)  # the same weights in one process, on every rank
    expected = hf_generate(single, decode_result.workload, "dynamic").generated
    assert torch.equal(decode_result.output.generated, expected)


@pytest.mark.decode_perf(models="tiny-llama-gqa", stream="baseline", new_tokens=4, tp=2)
def test_body_fails_on_rank_1_alone(decode_result):
    assert os.environ.get("RANK") != "1", "rank 1 disagrees"


@pytest.mark.decode_perf(models="tiny-llama-gqa", stream="baseline", new_tokens=4, tp=2)
def test_rank_1_dies(decode_result):
    pass


@pytest.mark.decode_perf(models="tiny-llama-gqa", stream="nostop", new_tokens=4, tp=2)
def test_after_the_death(decode_result):
    assert decode_result.record()["world_size"] == 2
"""

ARGS = ["--decodeperf-rounds=2", "--decodeperf-warmup=0", "--decodeperf-max-time=0", "--decodeperf-device=cpu"]


def save_qwen2(path: Path, kv_heads: int = 2) -> None:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        initializer_range=INIT_RANGE,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tp")
    (path / "conftest.py").write_text(CONFTEST)
    (path / "test_tp.py").write_text(TESTS)
    save_qwen2(path / "qwen2-gqa")
    return path


def run(project: Path, *args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DECODEPERF")}
    for stale in project.glob("wrote-json-*"):
        stale.unlink()
    cmd = [*(launcher or [sys.executable]), "-m", "pytest", "-p", "no:cacheprovider", "--decodeperf", *ARGS, *args]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False)


def records(path: Path) -> dict[str, dict[str, Any]]:
    return {r["test"]: r for r in json.loads(path.read_text())["results"]}


@pytest.fixture(scope="module")
def started_by_the_plugin(project: Path) -> subprocess.CompletedProcess[str]:
    return run(project, "--benchmark-json=bench.json", "--decodeperf-json=plugin.json")


def test_the_plugin_starts_two_ranks_whose_tokens_are_generates_and_only_the_session_writes(
    project: Path, started_by_the_plugin: subprocess.CompletedProcess[str]
) -> None:
    out = started_by_the_plugin.stdout
    assert "9 passed, 2 failed" in out.splitlines()[-1] or "2 failed, 9 passed" in out.splitlines()[-1], out[-3000:]
    assert "tp  world     coll/step" in out
    recs = records(project / "plugin.json")
    sharded = [r for r in recs.values() if r["tp"] == 2 and "test_sharded" in r["test"]]
    assert len(sharded) == 4 and len(recs) == 4 + 4 + 2  # the item whose body failed on rank 1 was measured
    for rec in recs.values():
        assert rec["parity"] == "pass"
        assert (rec["world_size"], rec["backend"]) == ((2, "gloo") if rec["tp"] == 2 else (1, None))
    for rec in sharded:
        assert rec["test"].endswith("-tp2]")
        assert set(rec["collective_ops"]) == {"all_reduce", "all_gather"}  # row-wise layers reduce, the head gathers
        assert rec["collectives_per_step"] > 0 and rec["collective_bytes_per_step"] > 0
        assert rec["syncs_per_step"] == 0  # the sync budget holds on every rank
        single = recs[rec["test"].replace("-tp2]", "]")]
        assert rec["kv_bytes_per_step"] == pytest.approx(single["kv_bytes_per_step"] / 2)  # each rank: half the heads
    assert [p.name for p in project.glob("wrote-json-*")] == ["wrote-json-session"]
    benchmarks = {b["fullname"]: b for b in json.loads((project / "bench.json").read_text())["benchmarks"]}
    assert {r["test"] for r in sharded} <= set(benchmarks)  # pytest-benchmark gets the ranks' rounds too


def test_a_rank_that_fails_or_dies_fails_its_item_naming_it_and_the_session_goes_on(
    started_by_the_plugin: subprocess.CompletedProcess[str],
) -> None:
    out = started_by_the_plugin.stdout
    assert "FAILED test_tp.py::test_body_fails_on_rank_1_alone[tiny-llama-gqa-dynamic-baseline-b1-tp2]" in out
    assert "\nrank 1: AssertionError: rank 1 disagrees\n" in out
    assert "FAILED test_tp.py::test_rank_1_dies[tiny-llama-gqa-dynamic-baseline-b1-tp2]" in out
    assert "\ntp=2: rank 1's process exited (3)" in out
    assert "test_after_the_death" not in out.split("short test summary")[-1]  # fresh ranks ran it


def test_under_torchrun_every_rank_runs_the_same_items_and_rank_0_alone_reports(
    project: Path, started_by_the_plugin: subprocess.CompletedProcess[str]
) -> None:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--local-ranks-filter", "0"]
    result = run(project, "-k", "not dies", "--decodeperf-json=torchrun.json", launcher=torchrun)
    out = result.stdout
    assert result.returncode == 1 and out.count("= decode perf =") == 1, out[-3000:]
    assert "1 failed, 9 passed" in out.splitlines()[-1] or "9 passed, 1 failed" in out.splitlines()[-1]
    assert "rank 1: AssertionError: rank 1 disagrees" in out
    assert [p.name for p in project.glob("wrote-json-*")] == ["wrote-json-0"]
    launched, started = records(project / "torchrun.json"), records(project / "plugin.json")
    assert set(launched) == set(started)
    for test, rec in launched.items():
        assert rec["world_size"] == 2 and rec["parity"] == "pass"
        assert (rec["tp"], rec["collective_ops"]) == (started[test]["tp"], started[test]["collective_ops"])


def test_a_tp_that_cannot_run_is_refused_at_collection_in_one_line(
    pytester: pytest.Pytester, run_decodeperf: Any
) -> None:
    torch.manual_seed(0)
    mqa = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(mqa).save_pretrained(pytester.path / "mqa")
    pytester.makepyfile(
        test_no_plan="""
        import pytest

        @pytest.mark.decode_perf(models="tiny-gpt2", tp=2)
        def test_no_plan(): pass
        """,
        test_heads="""
        import pytest

        @pytest.mark.decode_perf(models="mqa", tp=2)
        def test_heads(): pass
        """,
        test_devices="""
        import pytest

        @pytest.mark.decode_perf(models="tiny-llama-gqa", tp=1024)
        def test_devices(): pass
        """,
    )
    result = run_decodeperf("--co", "--continue-on-collection-errors")
    result.stdout.fnmatch_lines_random(
        [
            "*test_no_plan: tp=2: tiny-gpt2: GPT2Config has no tensor-parallel plan in transformers * only tp=1 *",
            "*test_heads: tp=2: mqa: tp=2 does not divide LlamaConfig's 4 query / 1 key-value heads",
            "*test_devices: tp=1024 needs 1024 devices; this machine has * CPU core(s) (one per rank)",
        ]
    )


def test_the_option_widens_what_can_be_sharded_and_says_what_it_left_out(
    pytester: pytest.Pytester, run_decodeperf: Any
) -> None:
    pytester.makepyfile(
        test_widened="""
        import pytest

        @pytest.mark.decode_perf(models=("tiny-gpt2", "tiny-llama-gqa"), stream="baseline")
        def test_both(): pass
        """
    )
    result = run_decodeperf("--co", "-q", "--decodeperf-tp=1,2")
    result.stdout.fnmatch_lines(
        [
            "test_widened.py::test_both[[]tiny-gpt2-dynamic-baseline-b1[]]",
            "test_widened.py::test_both[[]tiny-llama-gqa-dynamic-baseline-b1[]]",
            "test_widened.py::test_both[[]tiny-llama-gqa-dynamic-baseline-b1-tp2[]]",
            "decode perf: not run: tp=2: tiny-gpt2: GPT2Config has no tensor-parallel plan *",
        ]
    )
    usage = run_decodeperf("-n", "64", "--decodeperf-tp=2", inprocess=True)
    assert usage.ret == pytest.ExitCode.USAGE_ERROR
    usage.stderr.fnmatch_lines(["*pytest-decodeperf: -n 64 with tp=2 needs 2 devices; each of 64 xdist workers has *"])


class Group:
    """What every rank put in at an exchange (a stand-in for the control group)."""

    def __init__(self, *seen: tuple[str, str, str, str]):
        self.seen = list(seen)

    def exchange(self, _mine: object) -> list[tuple[str, str, str, str]]:
        return self.seen


def test_each_rank_takes_a_phases_worst_outcome_and_ranks_out_of_step_stop_the_session() -> None:
    from types import SimpleNamespace

    from pytest_decodeperf.engine.parallel.distributed import RankEnv
    from pytest_decodeperf.tp.ranks import RankSession

    item: Any = SimpleNamespace(nodeid="t.py::x", path="t.py", location=("t.py", 3, "x"))
    item.session = SimpleNamespace(shouldstop=False)

    def agreed(*seen: tuple[str, str, str, str]) -> pytest.TestReport:
        ranks = RankSession(RankEnv(0, 2, 0, 2, "torchrun"))
        ranks.group = Group(*seen)  # type: ignore[assignment]
        report = pytest.TestReport("t.py::x", ("t.py", 3, "x"), {}, "passed", None, "setup")
        ranks.agree(item, report)
        return report

    ok = ("t.py::x", "setup", "passed", "")
    assert agreed(ok, ok).passed
    failed = agreed(ok, ("t.py::x", "setup", "failed", "RuntimeError: no GPU 1"))
    assert failed.failed and failed.longrepr == "rank 1: RuntimeError: no GPU 1"  # rank 0 measures nothing alone
    skipped = agreed(ok, ("t.py::x", "setup", "skipped", "no model"))
    assert skipped.skipped and skipped.longrepr == ("t.py", 3, "rank 1: no model")
    lost = agreed(ok, ("t.py::y", "setup", "passed", ""))
    assert lost.failed and "ranks out of step: rank 0 is at t.py::x (setup), rank 1 is at t.py::y" in str(lost.longrepr)
    assert item.session.shouldstop
