"""The GitHub Actions workflows: actionlint finds nothing, and the nightly does what docs/how-to/nightly.md says."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_decodeperf.options import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
NIGHTLY = WORKFLOWS / "nightly-gpu.yml"

# Runner labels beyond GitHub's own, which actionlint would otherwise report as typos.
ACTIONLINT_CONFIG = "self-hosted-runner:\n  labels:\n    - gpu\n"


def find_tool(name: str) -> str | None:
    """The tool from this interpreter's environment (installed by the dev extras), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which(name)


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    if True in data:  # YAML 1.1 reads the key `on:` as the boolean true
        data["on"] = data.pop(True)
    return data


def steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = workflow["jobs"][job]["steps"]
    return result


def step_running(workflow: dict[str, Any], job: str, text: str) -> dict[str, Any]:
    found = [s for s in steps(workflow, job) if text in s.get("run", "")]
    assert len(found) == 1, f"expected one step of job {job!r} running {text!r}, found {len(found)}"
    return found[0]


def step_using(workflow: dict[str, Any], job: str, action: str) -> list[dict[str, Any]]:
    return [s for s in steps(workflow, job) if s.get("uses", "").split("@")[0] == action]


def test_actionlint_finds_nothing_in_the_workflows(tmp_path: Path) -> None:
    actionlint = find_tool("actionlint")
    if actionlint is None:
        reason = "actionlint is not installed (it comes with the dev extras)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must prove the workflows lint", pytrace=False)
        pytest.skip(reason)
    config = tmp_path / "actionlint.yaml"
    config.write_text(ACTIONLINT_CONFIG)
    # actionlint checks `run:` scripts with shellcheck when it finds one.
    shellcheck = find_tool("shellcheck")
    command = [actionlint, "-no-color", "-config-file", str(config)]
    command += [f"-shellcheck={shellcheck}"] if shellcheck else []

    done = subprocess.run(
        [*command, str(CI.relative_to(ROOT)), str(NIGHTLY.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_ci_runs_dot_ci_run_and_a_lint_job_on_cpu_python_3_11() -> None:
    ci = load(CI)

    assert {"push", "pull_request"} <= set(ci["on"])
    for job in ("test", "lint"):
        assert ci["jobs"][job]["runs-on"] == "ubuntu-latest"
        (python,) = step_using(ci, job, "actions/setup-python")
        assert str(python["with"]["python-version"]) == "3.11"
        assert step_using(ci, job, "actions/checkout")
    assert step_running(ci, "test", "bash .ci/run")
    install = step_running(ci, "lint", "-e '.[dev]'")["run"]
    assert "download.pytorch.org/whl/cpu" in str(ci["env"]["TORCH_CPU_INDEX"])
    assert install.index("--index-url") < install.index("-e '.[dev]'"), "the CPU torch must come first"
    assert step_running(ci, "lint", "ruff check .")
    assert step_running(ci, "lint", "mypy")


def test_nightly_runs_on_a_schedule_by_hand_and_on_a_labelled_pull_request_on_a_gpu_runner() -> None:
    nightly = load(NIGHTLY)

    assert set(nightly["on"]) == {"schedule", "workflow_dispatch", "pull_request"}
    assert nightly["on"]["schedule"][0]["cron"].split()[2:] == ["*", "*", "*"], "every night"
    assert nightly["jobs"]["perf"]["runs-on"] == ["self-hosted", "linux", "gpu"]
    only = nightly["jobs"]["perf"]["if"]  # a pull request: labelled, and never a fork's code on the runner
    assert "'decode-perf'" in only and "github.event.pull_request.head.repo.full_name == github.repository" in only
    # the nightlies queue in one group, never cancelled; a pull request's runs have their own group
    assert nightly["concurrency"]["cancel-in-progress"] == "${{ github.event_name == 'pull_request' }}"
    assert nightly["concurrency"]["group"].startswith("nightly-gpu${{ github.event_name == 'pull_request' && ")


def test_nightly_pytest_compares_with_asv_history_and_fails_on_a_failed_pipe() -> None:
    nightly = load(NIGHTLY)
    run = step_running(nightly, "perf", "--decodeperf-asv --decodeperf-compare")["run"]
    words = shlex.split(run.replace("\\\n", " "), comments=True)

    for flag in ("--decodeperf", "--decodeperf-asv", "--decodeperf-compare", "--decodeperf-json", "--decodeperf-plot"):
        assert flag in words, flag
    assert words[words.index("--decodeperf-json") + 1] == "decodeperf-nightly.json"
    assert words[words.index("--decodeperf-plot") + 1] == "plots"
    known = {spec.flag_name for spec in OPTIONS}
    assert {w for w in words if w.startswith("--decodeperf")} <= known, "an option the plugin does not have"
    assert "set -o pipefail" in run and "| tee " in run


def test_nightly_keeps_history_and_dashboard_even_when_pytest_fails() -> None:
    nightly = load(NIGHTLY)
    (restore,) = [s for s in step_using(nightly, "perf", "actions/checkout") if "path" in s.get("with", {})]
    assert restore["with"] == {"ref": "asv-results", "path": ".asv/results"}
    assert nightly["jobs"]["perf"]["permissions"]["contents"] == "write"

    publish = step_running(nightly, "perf", "decodeperf publish")
    push = step_running(nightly, "perf", "decodeperf history-push")
    stopped = step_running(nightly, "perf", "[ ! -s decodeperf-nightly.md ]")
    artifact = step_using(nightly, "perf", "actions/upload-artifact")[0]
    ab = step_running(nightly, "perf", "--decodeperf-ab=")
    (comment,) = step_using(nightly, "perf", "actions/github-script")
    for step in (publish, push, stopped, artifact, ab, comment):
        assert "!cancelled()" in step["if"], f"{step['name']!r} must run after a failed pytest"
    for step in (publish, push):  # a pull request's numbers stay out of the history and the dashboard
        assert "github.event_name != 'pull_request'" in step["if"], step["name"]
    assert ".asv/html" in artifact["with"]["path"]
    order = steps(nightly, "perf")
    assert order.index(step_running(nightly, "perf", "--decodeperf-asv --decodeperf-compare")) < order.index(push)

    (pages,) = step_using(nightly, "perf", "actions/upload-pages-artifact")
    assert pages["with"]["path"] == ".asv/html"
    deploy = nightly["jobs"]["pages"]
    assert deploy["needs"] == "perf" and "!cancelled()" in deploy["if"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert step_using(nightly, "pages", "actions/deploy-pages")


def test_nightly_ab_runs_against_the_previous_nightly_before_the_push_and_its_table_is_summarised() -> None:
    nightly = load(NIGHTLY)
    order = steps(nightly, "perf")
    ab = step_running(nightly, "perf", "--decodeperf-ab=")
    push = step_running(nightly, "perf", "decodeperf history-push")
    perf = step_running(nightly, "perf", "--decodeperf-asv --decodeperf-compare")
    assert order.index(perf) < order.index(ab) < order.index(push)  # the newest results are last night's
    run = ab["run"]
    assert 'ref=$(decodeperf history-last --results-dir "$RESULTS_DIR")' in run
    assert "set -o pipefail" in run and "| tee decodeperf-ab.log" in run
    words = shlex.split(run.split("python -m pytest", 1)[1].replace("\\\n", " "), comments=True)
    known = {spec.flag_name for spec in OPTIONS}
    assert {w.split("=")[0] for w in words if w.startswith("--decodeperf")} <= known
    assert '--commit "$GITHUB_SHA"' in push["run"]  # so tomorrow's history-last finds tonight's commit
    assert words[words.index("--decodeperf-markdown") + 1] == "decodeperf-ab.md"
    assert 'if [ -n "$BASE_SHA" ]; then' in run and ab["env"]["BASE_SHA"] == "${{ github.event.pull_request.base.sha }}"
    artifact = step_using(nightly, "perf", "actions/upload-artifact")[0]
    assert "decodeperf-ab.log" in artifact["with"]["path"]


def test_the_report_goes_to_the_job_summary_and_on_a_pull_request_to_one_comment() -> None:
    """pytest appends its Markdown report to the job summary itself (GITHUB_STEP_SUMMARY is set in a step); the
    copies it writes with --decodeperf-markdown become the pull request's comment and part of the artifact."""
    nightly = load(NIGHTLY)
    order = steps(nightly, "perf")
    perf = step_running(nightly, "perf", "--decodeperf-asv --decodeperf-compare")
    words = shlex.split(perf["run"].split("python -m pytest", 1)[1].replace("\\\n", " "), comments=True)
    assert words[words.index("--decodeperf-markdown") + 1] == "decodeperf-nightly.md"
    ab = step_running(nightly, "perf", "--decodeperf-ab=")
    (comment,) = step_using(nightly, "perf", "actions/github-script")
    assert "github.event_name == 'pull_request'" in comment["if"]
    assert order.index(perf) < order.index(ab) < order.index(comment)
    script = comment["with"]["script"]
    assert '"decodeperf-nightly.md", "decodeperf-ab.md"' in script and "updateComment" in script
    assert nightly["jobs"]["perf"]["permissions"]["pull-requests"] == "write"
    artifact = step_using(nightly, "perf", "actions/upload-artifact")[0]
    assert {"decodeperf-nightly.md", "decodeperf-ab.md"} <= set(artifact["with"]["path"].split())
