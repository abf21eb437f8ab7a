"""Faults and hygiene: an OOM fails one item only, a broken stop policy is caught, nothing unsafe runs."""

from __future__ import annotations

import ast
import json
import re
import socket
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_decodeperf"
FAST = [
    "--decodeperf",
    "--decodeperf-rounds=2",
    "--decodeperf-max-time=0",
    "--decodeperf-warmup=0",
    "--benchmark-disable",
    "-p",
    "no:cacheprovider",
]


def test_out_of_memory_in_one_variant_fails_that_item_and_the_rest_still_run(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest, torch
        from pytest_decodeperf import build_model

        @pytest.fixture
        def decode_model(decode_variant):
            model = build_model("tiny-gpt2")
            if decode_variant.batch_size == 4:
                def explode(*args, **kwargs):
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
                model.register_forward_pre_hook(explode)
            return model
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.decode_perf(models="tiny-gpt2", stream="baseline", batch_size=(1, 4, 2), new_tokens=8)
        def test_decode():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*FAST, "--decodeperf-json=out.json")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*out of memory in tiny-gpt2-dynamic-baseline-b4: CUDA out of memory*"])
    assert "Traceback" not in result.stdout.str()
    records = json.loads((pytester.path / "out.json").read_text())["results"]
    assert sorted(r["batch_size"] for r in records) == [1, 2]


def test_a_stop_policy_that_reads_the_wrong_step_is_caught_by_the_parity_gate(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from pytest_decodeperf.engine.decode.stream_modes import StopPolicy, register_stop_policy

        class ReadsCurrentStep(StopPolicy):
            def read_slot(self, step):
                return step - 2  # reads the flag it just published, thinking it is a step old

        register_stop_policy(ReadsCurrentStep("broken-lag", 1, 2, "test double: wrong flag"))
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.decode_perf(stream=("baseline", "broken-lag"), batch_size=4, new_tokens=32)
        def test_decode():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*FAST)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*parity FAILED: tiny-gpt2-dynamic-broken-lag-b4 differs from transformers generate()*",
            "*first divergence at generated position * got <end>*",
        ]
    )


def test_the_package_never_loads_pickles_remote_code_or_the_network() -> None:
    """Every module: no pickle, no remote code, no network; the one loader (a user's checkpoint) reads local files."""
    forbidden = re.compile(
        # the requests library, not the word (a server's requests are the serving mode's subject)
        r"torch\.load|pickle\.|import pickle|trust_remote_code\s*=\s*True|urllib|import requests|requests\.(get|post)"
        r"|http\.client"
        r"|snapshot_download|hf_hub"
    )
    hits = [
        f"{path.name}:{n}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert hits == []
    loads = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                given = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                loads.append((path.name, node.lineno, given.get("local_files_only"), given.get("trust_remote_code")))
    assert loads and all(local is True and remote is False for _, _, local, remote in loads), loads


def test_a_whole_variant_runs_with_the_network_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_decodeperf import Runner, Variant

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = Runner("cpu", rounds=1, warmup=0).run(Variant("tiny-llama-gqa", "static", "pipelined", 2, 8))
    assert result.parity is not None and result.parity.ok
