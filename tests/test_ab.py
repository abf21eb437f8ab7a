"""Same-session A/B (``--decodeperf-ab``), end to end in a temporary git repository, and its bad input.

Commit 1 is the good code; commit 2 adds ~8 ms of busy work to every forward of tiny-gpt2 through a
``decode_model`` override (a step is 1-3 ms here: a slowdown of twice or more, which no noise on
this machine reaches, so the test cannot flake). ``--decodeperf-ab`` against commit 1 must fail
naming the variant, the ratio and the interval; against HEAD itself (A/A) it must not fail, at a
gate of 100% so that this plumbing test is no statistical assertion either. The gate's statistics
are tested on synthetic samples (``test_ab_stats.py``); its live false-alarm and detection rates
come from ``scripts/ab_validity.py`` and stand in docs/explanation/validity.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch  # noqa: F401  # before any in-process run: pytester's module snapshot then keeps numpy (it cannot load twice)
from git_helpers import git

CONFTEST = """
import time
import pytest
import torch
from pytest_decodeperf import build_model, decoder

SLOWDOWN_S = {slowdown}

@decoder("my-loop")
def my_loop(model, inputs):  # a user's own greedy loop, stop="none": every step runs
    tokens, start, out = inputs.input_ids, 0, []
    for step in range(inputs.max_new_tokens):
        end = inputs.prompt_len + step
        token = model(tokens, **inputs.forward_kwargs(start, end)).logits[:, -1].argmax(-1)
        out.append(token)
        tokens, start = token[:, None], end
    return torch.stack(out, dim=1)

@pytest.fixture
def decode_model(decode_variant):
    model = build_model(decode_variant.model)
    def work(*_):  # deliberate extra work per forward (0 s on the good commit)
        end = time.perf_counter() + SLOWDOWN_S
        while time.perf_counter() < end:
            pass
    model.register_forward_hook(work)
    return model
"""
TEST = """
import pytest

@pytest.mark.decode_perf(models="tiny-gpt2", cache="dynamic", stream=("baseline", "my-loop"), new_tokens=8,
                         stop="none")
def test_decode():
    assert False, "under --decodeperf-ab the body runs in neither the controller nor the workers"
"""
STREAMS = ("baseline", "my-loop")  # the plugin's loop, and a decoder of the user's
ARGS = ["--decodeperf", "--decodeperf-ab-processes=3", "--decodeperf-ab-max-pairs=15", "--decodeperf-warmup=1"]
ARGS += ["-p", "no:cacheprovider"]


@pytest.fixture
def repo(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = pytester.path
    git(path, "init", "-q", "-b", "main")
    pytester.makeconftest(CONFTEST.format(slowdown=0.0))
    pytester.makepyfile(test_decode=TEST)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "good")
    return path


def commit_slowdown(pytester: pytest.Pytester, repo: Path, seconds: float) -> None:
    pytester.makeconftest(CONFTEST.format(slowdown=seconds))
    git(repo, "commit", "-q", "-am", f"slower by {seconds} s per forward")


def worktrees(repo: Path) -> list[str]:
    return [line for line in git(repo, "worktree", "list").splitlines() if line]


def test_a_slowdown_commit_fails_naming_the_variant_the_ratio_and_the_interval(
    pytester: pytest.Pytester, repo: Path
) -> None:
    commit_slowdown(pytester, repo, 0.008)
    # 4 process pairs: the last look then has 3 degrees of freedom (t 5.8 rather than 9.9 at 2), so even a
    # busy machine, whose process pairs disagree by tens of percent, cannot hide an 8x slowdown
    result = pytester.runpytest_subprocess(
        *ARGS,
        "--decodeperf-ab-processes=4",
        "--decodeperf-ab-max-pairs=20",
        "--decodeperf-ab",
        "--decodeperf-json=ab.json",
    )
    result.assert_outcomes(failed=2)
    ab = json.loads((repo / "ab.json").read_text())["ab"]
    assert [r["test"] for r in ab] == [f"test_decode.py::test_decode[tiny-gpt2-dynamic-{s}-b1]" for s in STREAMS]
    for record in ab:
        assert record["failed"] and record["ref"] == "HEAD~1" and record["gate_pct"] == 5.0
        ms = record["metrics"]["ms_per_token"]
        assert ms["decision"] == "different_worse" and ms["judged"] and ms["processes"] >= 3 and ms["pairs"] >= 15
        assert 1.0 < ms["ci_low"] < ms["ratio"] < ms["ci_high"]
        assert record["syncs_per_step"] == [0, 0] and record["error"] is None
    result.stdout.fnmatch_lines(
        [
            "A/B process pair 1/4: * items decided (* s)",
            "*A/B against HEAD~1: test_decode[[]tiny-gpt2-dynamic-baseline-b1[]]: ms/token worse x*(99% CI *-*, "
            "* process pairs, * pairs*",
            "*= decode perf A/B =*",
            "decode perf A/B: B = * (the checkout) against A = * (HEAD~1); gate 5%, * of at most 4 process pairs, "
            "5 alternating round pairs each; both sides pinned to CPU *",
        ]
    )
    assert "assert False" not in result.stdout.str()  # the body ran nowhere
    assert len(worktrees(repo)) == 1  # the temporary worktree is gone


def test_the_same_commit_against_itself_does_not_fail_and_the_environment_may_ask_for_it(
    pytester: pytest.Pytester, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DECODEPERF_AB", "HEAD")  # the workers inherit the environment: they must not recurse
    result = pytester.runpytest_subprocess(*ARGS, "--decodeperf-fail-on-regression=100")
    result.assert_outcomes(passed=2)
    text = result.stdout.str()
    assert "worse" not in text and "syncs/step 0 -> 0" in text
    result.stdout.fnmatch_lines(["decode perf A/B: B = * (the checkout) against A = * (HEAD); gate 100%*"])
    assert len(worktrees(repo)) == 1


BROKEN_FIRST = """
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("this fixture fails on both sides")

@pytest.mark.decode_perf(models="tiny-gpt2", cache="dynamic", stream="baseline", new_tokens=8, stop="none")
def test_broken(broken):
    pass

@pytest.mark.decode_perf(models="tiny-gpt2", cache="dynamic", stream={streams}, new_tokens=8, stop="none")
def test_decode():
    pass
"""


def test_a_variant_ref_lacks_is_skipped_and_a_failed_setup_keeps_the_sides_in_step(
    pytester: pytest.Pytester, repo: Path
) -> None:
    pytester.makepyfile(test_decode=BROKEN_FIRST.format(streams='("baseline",)'))
    git(repo, "commit", "-q", "-am", "a broken test first")
    pytester.makepyfile(test_decode=BROKEN_FIRST.format(streams='("baseline", "pipelined")'))
    git(repo, "commit", "-q", "-am", "a new stream mode")
    result = pytester.runpytest_subprocess(*ARGS, "-rs", "--decodeperf-ab", "--decodeperf-fail-on-regression=100")
    result.assert_outcomes(passed=1, skipped=1, errors=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_decode.py:*: not at REF HEAD~1 (*): nothing to compare with"])
    result.stdout.fnmatch_lines(["test_decode[[]tiny-gpt2-dynamic-baseline-b1[]]: ms/token * pairs*"])
    assert "out of step" not in result.stdout.str()


def test_a_ref_that_is_not_a_commit_is_one_line(pytester: pytest.Pytester, repo: Path) -> None:
    result = pytester.runpytest_subprocess(*ARGS, "--decodeperf-ab=nosuchref")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-decodeperf: --decodeperf-ab: REF 'nosuchref' is not a commit of * (try a hash, a branch*"]
    )


def test_a_dirty_tree_is_refused_in_one_line(pytester: pytest.Pytester, repo: Path) -> None:
    commit_slowdown(pytester, repo, 0.001)
    (repo / "conftest.py").write_text((repo / "conftest.py").read_text() + "\n# edited\n")
    result = pytester.runpytest_subprocess(*ARGS, "--decodeperf-ab")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*the checkout has uncommitted changes (conftest.py): commit or stash them first"])


def test_outside_a_git_checkout_is_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_decode=TEST)
    result = pytester.runpytest_subprocess(*ARGS, "--decodeperf-ab")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--decodeperf-ab compares two commits, but * is not inside a git checkout"])


def test_a_ref_without_the_test_file_is_one_line_and_leaves_no_worktree(pytester: pytest.Pytester, repo: Path) -> None:
    pytester.makepyfile(test_new=TEST)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a new test file")
    result = pytester.runpytest_subprocess(*ARGS, "test_new.py", "--decodeperf-ab")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_new.py does not exist at REF HEAD~1 (*): pick a REF that has the test*"])
    assert len(worktrees(repo)) == 1


def test_a_test_path_taken_for_ref_says_how_to_write_it(pytester: pytest.Pytester, repo: Path) -> None:
    result = pytester.runpytest_subprocess(*ARGS, "--decodeperf-ab", "test_decode.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*REF 'test_decode.py' is not a commit of * (it is a path; write --decodeperf-ab=REF*"]
    )


def test_a_branch_defaults_to_its_merge_base_with_main(pytester: pytest.Pytester, repo: Path) -> None:
    from pytest_decodeperf.ab.checkout import default_ref

    base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "feature")
    commit_slowdown(pytester, repo, 0.001)
    commit_slowdown(pytester, repo, 0.002)
    assert default_ref(repo) == base
    git(repo, "checkout", "-q", "main")
    assert default_ref(repo) == "HEAD~1"


def test_a_ref_side_that_imports_the_checkouts_code_is_refused_in_one_line(
    pytester: pytest.Pytester, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "src" / "mymodels").mkdir(parents=True)
    (repo / "src" / "mymodels" / "__init__.py").write_text("EXTRA_S = 0.0\n")
    pytester.makeconftest("import mymodels\n" + CONFTEST.format(slowdown="mymodels.EXTRA_S"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a src layout")
    monkeypatch.setenv("PYTHONPATH", str(repo / "src"))  # both sides would import the checkout's src/
    result = pytester.runpytest_subprocess(*ARGS, "--decodeperf-ab=HEAD")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-decodeperf: side A (REF HEAD): it imported the checkout's code, not REF's: mymodels (*"]
    )
    assert len(worktrees(repo)) == 1


def test_options_that_change_the_variants_reach_both_workers(tmp_path: Path) -> None:
    """--decodeperf-prompt-lens/-dtype/-model-path reshape the matrix: a worker without them would expand
    other variants than the controller pairs (the model path made absolute: workers run in other trees)."""
    from dataclasses import fields, replace
    from types import SimpleNamespace

    from pytest_decodeperf.ab.session import ABSession
    from pytest_decodeperf.options import Settings

    blank = Settings(**{f.name: None for f in fields(Settings)})
    session = object.__new__(ABSession)
    session.settings = replace(blank, warmup=1, prompt_lens=(16, "mixed"), dtype="bfloat16", model_path="ckpt")
    session.device = "cpu"
    config = SimpleNamespace(
        invocation_params=SimpleNamespace(args=()), pluginmanager=SimpleNamespace(hasplugin=lambda name: False)
    )
    args = session._worker_args(config, ["test_x.py"])  # type: ignore[arg-type]
    assert "--decodeperf-prompt-lens=16,mixed" in args and "--decodeperf-dtype=bfloat16" in args
    assert f"--decodeperf-model-path={Path('ckpt').resolve()}" in args
    assert "no:decodeperf-markdown" in args  # a worker inherits GITHUB_STEP_SUMMARY: only the controller reports
    assert args[-1] == "test_x.py"


def test_a_ref_of_this_plugin_that_predates_an_option_given_is_one_line(tmp_path: Path) -> None:
    """The nightly's REF is this repository: one from before --decodeperf-prompt-lens would die refusing it."""
    from pytest_decodeperf.ab.checkout import Sides, check_options_at_ref
    from pytest_decodeperf.errors import DecodePerfError

    sides = Sides(tmp_path, tmp_path, "HEAD~1", "a" * 40, "b" * 40)
    args = ["--decodeperf", "--decodeperf-device=cpu", "--decodeperf-prompt-lens=16,mixed", "test_x.py"]
    check_options_at_ref(sides, tmp_path, args)  # another project's REF: the installed plugin serves it
    (tmp_path / "pytest_decodeperf").mkdir()
    (tmp_path / "pytest_decodeperf" / "options.py").write_text('OptionSpec("device", ...)\nOptionSpec("models", ...)\n')
    with pytest.raises(DecodePerfError, match=r"REF HEAD~1 \(aaaaaaaa\) predates --decodeperf-prompt-lens: its side"):
        check_options_at_ref(sides, tmp_path, args)
    check_options_at_ref(sides, tmp_path, args[:2])  # what it knows passes


ROOT = Path(__file__).resolve().parents[1]


# The last commit whose workers read the plugin through protocol version 1 (pytest_decodeperf/protocol.py):
# the plugin module's MODEL_KEY/_item_param/_session and engine.paired, before the engine moved into sub-packages.
PROTOCOL_V1 = "97a228022455f1eda3435898e80f0346c92475cb"


@pytest.mark.parametrize("newer", ["checkout", "ref"])
def test_this_repository_ab_tests_itself_from_a_clone_across_the_protocol_change(tmp_path: Path, newer: str) -> None:
    """The nightly runs ``python -m pytest perf_tests --decodeperf --decodeperf-ab=REF`` in a checkout of this
    repository: side A's worktree then holds pytest-decodeperf itself (its own plugin and engine), and the
    worker script, the checkout's, must not be taken for borrowed code. Across a change of what a worker reads
    from the package (protocol.py), both ways: this commit against the last one of protocol version 1, and that
    one's checkout against this commit as REF (its worker script reads this package). A short budget: 3 pairs."""
    import subprocess
    import sys

    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--no-hardlinks", str(ROOT), str(clone))
    if subprocess.run(["git", "cat-file", "-e", PROTOCOL_V1], cwd=clone, check=False).returncode != 0:
        pytest.skip(f"this clone has no commit {PROTOCOL_V1[:8]} (a shallow clone?)")
    head = git(clone, "rev-parse", "HEAD")
    ref = PROTOCOL_V1 if newer == "checkout" else head
    if newer == "ref":
        git(clone, "checkout", "-q", "--detach", PROTOCOL_V1)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "perf_tests",
        "--decodeperf",
        f"--decodeperf-ab={ref}",
        "-p",
        "no:cacheprovider",
    ]
    cmd += ["--decodeperf-ab-processes=3", "--decodeperf-ab-max-pairs=12", "--decodeperf-fail-on-regression=100"]
    cmd += ["--decodeperf-caches=dynamic", "--decodeperf-streams=baseline", "--decodeperf-batch-sizes=1"]
    cmd += ["-k", "test_stream_overhead_without_stops"]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("DECODEPERF", "PYTEST_"))}
    proc = subprocess.run(cmd, cwd=clone, capture_output=True, text=True, timeout=600, check=False, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "1 passed" in out and "imported the checkout's code" not in out and "predates" not in out
    assert "A/B process pair 3/3" in out and "syncs/step 0 -> 0" in out
    assert f"B = {git(clone, 'rev-parse', 'HEAD')[:8]} (the checkout) against A = {ref[:8]}" in out
    assert len(worktrees(clone)) == 1
