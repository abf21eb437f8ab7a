"""Shared fixtures of the plugin's end-to-end tests: a clean environment and a fast inner pytest run."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

# CI's job summary is CI's own: no inner pytest run of this suite (pytester's, the docs' examples, an A/B's workers)
# may append its Markdown report there (job_summary.py writes to GITHUB_STEP_SUMMARY when it is set).
os.environ.pop("GITHUB_STEP_SUMMARY", None)

# Tiny and quick: two timed rounds, no warmup, on the CPU (the default model on CUDA is GPT-2 small).
FAST = ("--decodeperf-rounds=2", "--decodeperf-max-time=0", "--decodeperf-warmup=0", "--decodeperf-device=cpu")


@pytest.fixture
def clean_decodeperf_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs inherit the environment: a developer's DECODEPERF_* variable would change what they do."""
    for name in list(os.environ):
        if name == "DECODEPERF" or name.startswith("DECODEPERF_"):
            monkeypatch.delenv(name)


@pytest.fixture
def run_decodeperf(pytester: pytest.Pytester, clean_decodeperf_env: None) -> Callable[..., pytest.RunResult]:
    """Run pytest in a subprocess (the plugin imports torch: about 4 s) with the fast settings.

    ``enable``: pass ``--decodeperf``; ``benchmark``: leave pytest-benchmark on (else ``--benchmark-disable``);
    ``fast``: add the tiny settings in ``FAST`` before ``args`` (later flags win); ``inprocess``: run in this
    process, where torch is already imported, for runs that stop at a usage error before any decode.
    """

    def run(
        *args: str, enable: bool = True, benchmark: bool = False, fast: bool = True, inprocess: bool = False
    ) -> pytest.RunResult:
        flags = [*FAST] if fast else []
        if enable:
            flags.append("--decodeperf")
        if not benchmark:
            flags.append("--benchmark-disable")
        if inprocess:
            return pytester.runpytest_inprocess(*flags, *args)
        return pytester.runpytest_subprocess(*flags, *args)

    return run
