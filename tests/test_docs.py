"""The documentation cannot drift: the reference pages match the code, and every example runs.

Every fenced ``python`` and ``bash`` block of README.md and docs/ runs, page by page, in a temporary
user project (a git repository holding this checkout's ``perf_tests/`` and ``asv.conf.json``, two
commits deep, so history and A/B examples have commits to work with), with the installed plugin.
The blocks of a page run in order in one project, so a page can build a checkpoint and then measure
it. Decode perf runs are narrowed to one tiny variant by the environment (the command line still
wins over it): the dynamic cache, the baseline stream mode, batch 1, one round, 3 A/B process pairs.
A comment right before a block changes what happens to it:

* ``<!-- example: skip (why) -->``: not run (it needs a GPU, serves until stopped, ...): say why;
* ``<!-- example: file PATH -->``: written to PATH in the project, for the blocks after it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from git_helpers import git

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!-- example: (.*?) -->\s*$")
RUNNABLE = ("python", "bash")
NARROW = {
    "DECODEPERF_CACHES": "dynamic",
    "DECODEPERF_STREAMS": "baseline",
    "DECODEPERF_BATCH_SIZES": "1",
    "DECODEPERF_ROUNDS": "1",
    "DECODEPERF_WARMUP": "0",
    "DECODEPERF_MAX_TIME": "0",
    "DECODEPERF_AB_PROCESSES": "3",
    "DECODEPERF_AB_MAX_PAIRS": "12",
}


@dataclass(frozen=True)
class Example:
    page: Path
    line: int
    lang: str
    text: str
    directive: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def examples(page: Path) -> list[Example]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, lang = match.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        body = "\n".join(line[len(indent) :] for line in lines[i + 1 : end]) + "\n"
        before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        directive = DIRECTIVE.match(before)
        found.append(Example(page, i + 1, lang, body, directive.group(1).strip() if directive else ""))
        i = end + 1
    return found


def runnable(page: Path) -> list[Example]:
    return [e for e in examples(page) if e.lang in RUNNABLE and not e.directive.startswith("skip")]


def test_every_directive_is_known_and_a_skip_says_why() -> None:
    for page in PAGES:
        for example in examples(page):
            d = example.directive
            if not d:
                continue
            assert re.fullmatch(r"skip \(.+\)|file \S+", d), f"{example.where}: unknown example directive {d!r}"


def test_the_pages_hold_examples_to_run() -> None:
    """A guard on the parser itself: if it found nothing, every page test would pass vacuously."""
    assert len([e for page in PAGES for e in runnable(page)]) >= 15


def test_the_reference_pages_are_generated_from_the_current_code() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    shutil.copytree(ROOT / "perf_tests", path / "perf_tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "asv.conf.json", path / "asv.conf.json")
    (tmp_path / "home").mkdir()
    git(path.parent, "init", "-q", "-b", "main", str(path))
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "the suite")
    (path / "notes.txt").write_text("a second commit, for HEAD~1\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "notes")
    return path


def environment(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DECODEPERF", "PYTEST_"))}
    env.update(NARROW)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(project.parent / "home")  # asv's machine file stays out of the real home
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "docs"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "docs@example.com"
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize(
    "page", [p for p in PAGES if runnable(p)], ids=lambda p: str(p.relative_to(ROOT)).replace("/", "-")
)
def test_every_example_of_the_page_runs(page: Path, project: Path) -> None:
    env = environment(project)
    for n, example in enumerate(e for e in examples(page) if not e.directive.startswith("skip")):
        if example.directive.startswith("file "):
            target = project / example.directive.removeprefix("file ")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(example.text, encoding="utf-8")
            continue
        if example.lang == "python":
            script = project / f"_example_{n}.py"
            script.write_text(example.text, encoding="utf-8")
            cmd = [sys.executable, str(script)]
        elif example.lang == "bash":
            cmd = ["bash", "-e", "-o", "pipefail", "-c", example.text]
        else:
            continue
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False)
        output = (proc.stdout + proc.stderr)[-4000:]
        assert proc.returncode == 0, f"{example.where} ({example.lang}) exited {proc.returncode}:\n{output}"


def test_the_links_of_readme_lead_to_files_of_this_checkout() -> None:
    """README is read on the forge, outside the site: its relative links must resolve (mkdocs checks the site's)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "README links nowhere"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
