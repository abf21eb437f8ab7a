"""Issue 11's contract: loading the plugin is light, and the variant is measured in the call phase.

pytest loads the plugin in every session of every project where the package is installed, so
importing it must not import torch or transformers (about 4 s and 350 MB). The timing target
(``pytest --co -q`` within 0.15 s of ``-p no:decodeperf``) is measured by ``scripts/import_cost.py``,
not asserted here: CI tests assert no wall-clock statistics. What is asserted is its cause.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

HEAVY = ("torch", "transformers", "asv", "asv_runner", "matplotlib", "numpy")

Run = Callable[..., pytest.RunResult]


def modules_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_importing_the_plugin_imports_neither_torch_nor_transformers() -> None:
    assert modules_after("import pytest_decodeperf.plugin") == []


def test_importing_the_package_is_light_and_its_public_api_loads_on_first_use() -> None:
    assert modules_after("import pytest_decodeperf") == []
    assert "torch" in modules_after("from pytest_decodeperf import Runner, Variant")


def test_an_unknown_public_name_is_an_attribute_error() -> None:
    import pytest_decodeperf

    with pytest.raises(AttributeError, match="no attribute 'Runnner'"):
        pytest_decodeperf.Runnner  # noqa: B018


PROBE_CONFTEST = """
import json, sys


def pytest_sessionfinish(session):
    heavy = sorted(m for m in ("torch", "transformers", "asv", "matplotlib") if m in sys.modules)
    with open("heavy.json", "w") as fh:
        json.dump(heavy, fh)
"""


def test_a_project_without_decode_perf_tests_never_imports_the_engine(
    pytester: pytest.Pytester, clean_decodeperf_env: None
) -> None:
    pytester.makeconftest(PROBE_CONFTEST)
    pytester.makepyfile(test_plain="def test_one():\n    assert 1 + 1 == 2\n")
    for args in (["--co", "-q"], []):
        result = pytester.runpytest_subprocess(*args)
        assert result.ret == 0
        assert json.loads((pytester.path / "heavy.json").read_text()) == [], args


def test_the_help_still_documents_the_options_without_importing_the_engine(
    pytester: pytest.Pytester, clean_decodeperf_env: None
) -> None:
    pytester.makeconftest(PROBE_CONFTEST.replace("pytest_sessionfinish(session)", "pytest_unconfigure(config)"))
    result = pytester.runpytest_subprocess("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*--decodeperf-caches=NAMES*"])
    assert json.loads((pytester.path / "heavy.json").read_text()) == []


# A user's autouse fixture that wraps the model's forward with a known delay, set up after the
# plugin's own fixtures: the measurement must include it.
SLOW_FORWARD_CONFTEST = """
import time

import pytest

DELAY_S = 0.02


@pytest.fixture(autouse=True)
def slow_forward(decode_model):
    original = decode_model.forward

    def slow(*args, **kwargs):
        time.sleep(DELAY_S)
        return original(*args, **kwargs)

    decode_model.forward = slow
    yield
    decode_model.forward = original
"""


def test_a_model_patched_by_any_fixture_is_what_gets_measured(pytester: pytest.Pytester, run_decodeperf: Run) -> None:
    pytester.makeconftest(SLOW_FORWARD_CONFTEST)
    pytester.makepyfile(
        test_gen="""
        import pytest


        @pytest.mark.decode_perf(stream="baseline", new_tokens=6, stop="none")
        def test_gen(decode_result):
            assert decode_result is not None
            assert decode_result.record()["ms_per_token"] >= 20.0
        """
    )
    result = run_decodeperf("--decodeperf-json=out.json")
    result.assert_outcomes(passed=1)
    (record,) = json.loads((pytester.path / "out.json").read_text())["results"]
    # Each decode step sleeps 20 ms in the user's wrapper: tiny-gpt2 alone takes a few ms a step.
    assert record["ms_per_token"] >= 20.0
    assert record["prefill_ms"] >= 20.0


def test_the_report_header_names_device_versions_and_threads(pytester: pytest.Pytester, run_decodeperf: Run) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    result = run_decodeperf()
    result.stdout.fnmatch_lines(["decodeperf: device cpu, torch *, transformers *, * torch threads, cpu *"])
    plain = pytester.runpytest_subprocess()
    assert "decodeperf: device" not in plain.stdout.str()
