"""The one command line the plugin gives its workers, A/B sides and tensor-parallel ranks alike."""

from __future__ import annotations

import os

import pytest

from pytest_decodeperf.workers import forwarded


def test_only_the_options_that_change_collection_and_import_are_forwarded_never_an_ab_of_its_own() -> None:
    cmd = ["perf", "-x", "-p", "myplugin", "-pother", "-o", "decodeperf_ab=HEAD", "-o", "markers=x"]
    cmd += ["-odecodeperf_ab=1"]
    cmd += ["--import-mode=importlib", "--override-ini=decodeperf_ab=HEAD~1", "--decodeperf-ab", "-k", "gpt2"]
    assert forwarded(cmd) == ["-p", "myplugin", "-pother", "-o", "markers=x", "--import-mode=importlib"]


def test_an_ab_side_and_a_rank_expand_the_same_variants(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        conftest="""
        from pytest_decodeperf.options import load_settings
        from pytest_decodeperf.workers import pytest_args

        def pytest_configure(config):
            s = load_settings(config)
            config.stash_args = pytest_args(config, s, "cpu")

        def pytest_collection_finish(session):
            print("ARGS", " ".join(session.config.stash_args))
        """
    )
    pytester.makepyfile("def test_x(): pass")
    (pytester.path / "ckpt").mkdir()
    (pytester.path / "ckpt" / "config.json").write_text("{}")
    result = pytester.runpytest_subprocess(
        "-s", "--decodeperf-new-tokens=7", "--decodeperf-dtype=bfloat16", "--decodeperf-model-path=ckpt", "-p", "no:foo"
    )
    line = next(x for x in result.outlines if x.startswith("ARGS"))
    args = line.split()[1:]
    assert args[:4] == ["-p", "no:cacheprovider", "-q", "--decodeperf"]
    assert "--decodeperf-device=cpu" in args and "--decodeperf-new-tokens=7" in args
    assert "--decodeperf-dtype=bfloat16" in args
    assert f"--decodeperf-model-path={os.path.join(str(pytester.path), 'ckpt')}" in args  # absolute: other trees
    assert args[-2:] == ["-p", "no:foo"]


def test_no_module_beside_the_worker_script_shadows_a_standard_one() -> None:
    """worker.py runs by path, so its folder is first on sys.path until main() drops it: an ``ab/bisect.py``
    was imported as the standard ``bisect`` by pytest's own imports, and every worker died."""
    import sys
    from pathlib import Path

    import pytest_decodeperf.ab as ab

    names = {p.stem for p in Path(ab.__file__).parent.glob("*.py")}
    assert not names & set(sys.stdlib_module_names)
