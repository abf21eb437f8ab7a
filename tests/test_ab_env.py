"""A/B across environments (``--decodeperf-ab-python``): the upgrade that made decoding slower, named.

The second environment costs no install: a venv made without pip whose one ``.pth`` file adds this
venv's site-packages (so it has the same torch, transformers, pytest and plugin), plus a distribution
of its own, ``slowpatch`` 1.0, whose ``.pth`` import hook adds ~8 ms of busy work to every forward of
a ``*LMHeadModel`` (tiny-gpt2's step is 1-3 ms: a slowdown of several times, which no noise on this
machine reaches). Run from that venv with this interpreter as side A, the A/B must fail WORSE and name
``slowpatch absent -> 1.0`` as what differs; nothing else may differ.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch  # noqa: F401  # before any in-process run: pytester's module snapshot then keeps numpy (it cannot load twice)
from test_ab import CONFTEST, TEST

SLOWPATCH = '''"""An "upgrade" that slows every forward of a *LMHeadModel by 8 ms, hooked in as torch.nn is imported."""
import importlib.abc
import importlib.machinery
import sys
import time


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torch.nn.modules.module":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)

            def slow(mod, args, output):
                if type(mod).__name__.endswith("LMHeadModel"):
                    end = time.perf_counter() + 0.008
                    while time.perf_counter() < end:
                        pass

            module.register_module_forward_hook(slow)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
'''
ARGS = ["--decodeperf", "--decodeperf-ab-processes=3", "--decodeperf-ab-max-pairs=15", "-p", "no:cacheprovider"]
ARGS += ["-k", "baseline"]  # test_ab's test file, one of its two variants


def make_venv(path: Path) -> tuple[Path, Path]:
    """A venv without pip (a fraction of a second): its python and its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, capture_output=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return python, Path(site)


@pytest.fixture(scope="module")
def slowed_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python, site = make_venv(tmp_path_factory.mktemp("upgraded") / "venv")
    ours = sysconfig.get_paths()["purelib"]
    (site / "00-base.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    (site / "slowpatch.py").write_text(SLOWPATCH)
    (site / "slowpatch.pth").write_text("import slowpatch\n")
    meta = site / "slowpatch-1.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: slowpatch\nVersion: 1.0\n")
    return python


def test_an_upgrade_that_slows_the_model_is_worse_and_named(
    pytester: pytest.Pytester, slowed_venv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B = this checkout in the upgraded venv, A = the same files with this interpreter (no git needed)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pytester.makeconftest(CONFTEST.format(slowdown=0.0))  # its decoder, test_ab's
    pytester.makepyfile(test_decode=TEST)
    ours = Path(sys.executable)
    result = pytester.run(
        str(slowed_venv), "-m", "pytest", *ARGS, f"--decodeperf-ab-python={ours}", "--decodeperf-json=ab.json"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*A/B against {ours}: test_decode[[]tiny-gpt2-dynamic-baseline-b1[]]: ms/token worse x*; environment "
            "A -> B: slowpatch absent -> 1.0",
            f"decode perf A/B: B = the checkout with {slowed_venv} against A = the checkout with {ours}; gate 5%*",
            "environments differ, A -> B: slowpatch absent -> 1.0",
        ]
    )
    (record,) = json.loads((pytester.path / "ab.json").read_text())["ab"]
    assert record["ref"] == "" and record["a_commit"] == "" and record["a_python"] == str(ours)
    assert record["metrics"]["ms_per_token"]["decision"] == "different_worse"
    versions = record["versions"]
    assert versions.pop("slowpatch") == [None, "1.0"]
    assert set(versions) == {"python", "torch", "transformers"}  # nothing else differs
    assert all(a == b and a for a, b in versions.values())


def test_an_interpreter_without_the_packages_is_one_line(pytester: pytest.Pytester, tmp_path: Path) -> None:
    bare, _ = make_venv(tmp_path / "bare")
    pytester.makeconftest(CONFTEST.format(slowdown=0.0))  # its decoder, test_ab's
    pytester.makepyfile(test_abenv_decode=TEST)  # in this process: no module of tests/ has that name
    result = pytester.runpytest_inprocess(*ARGS, f"--decodeperf-ab-python={bare}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-decodeperf: --decodeperf-ab-python: {bare} cannot run side A: no pytest, torch, "
            "transformers, pytest_decodeperf in that environment (install pytest, torch, transformers and "
            "pytest-decodeperf there)"
        ]
    )


def test_a_missing_interpreter_is_one_line(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makeconftest(CONFTEST.format(slowdown=0.0))  # its decoder, test_ab's
    pytester.makepyfile(test_abenv_decode=TEST)
    result = pytester.runpytest_inprocess(*ARGS, f"--decodeperf-ab-python={tmp_path}/nope/python")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-decodeperf: interpreter '{tmp_path}/nope/python' does not exist "
            "(from command line --decodeperf-ab-python)"
        ]
    )


def test_what_differs_is_named_key_packages_first_and_the_record_keeps_them_all() -> None:
    from pytest_decodeperf.ab.environment import describe, differing, record_versions

    a = {"python": "3.11.9", "torch": "2.12.0", "transformers": "5.17.0", "tokenizers": "0.21.0", "zz": "1"}
    b = {"python": "3.11.9", "torch": "2.13.0", "transformers": "5.24.0", "tokenizers": "0.22.1", "aa": "2"}
    assert list(differing(a, b)) == ["torch", "transformers", "aa", "tokenizers", "zz"]
    assert describe(a, b) == (
        "torch 2.12.0 -> 2.13.0, transformers 5.17.0 -> 5.24.0, aa absent -> 2, tokenizers 0.21.0 -> 0.22.1 and 1 more"
    )
    assert describe(a, a) == ""
    assert record_versions(a, b)["python"] == ["3.11.9", "3.11.9"] and record_versions(a, b)["zz"] == ["1", None]
