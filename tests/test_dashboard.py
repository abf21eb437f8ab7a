"""asv's dashboard, as published by us, loads no script from the internet and renders in Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_decodeperf.history.dashboard import CDN_TO_LOCAL, localize

ROOT = Path(__file__).resolve().parents[1]


def test_every_cdn_script_asv_asks_for_is_served_from_a_local_copy(tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    tags = "\n".join(
        f'<script src="{url}" integrity="sha512-x" crossorigin="anonymous" onerror="js_load_failure()"></script>'
        for url in CDN_TO_LOCAL
    )
    page.write_text(f"<html><head>{tags}</head></html>")
    assert localize(tmp_path) == []
    text = page.read_text()
    assert "https://" not in text and "integrity=" not in text
    for local in CDN_TO_LOCAL.values():
        assert (tmp_path / "vendor" / local).stat().st_size > 1000
    assert (tmp_path / "fonts" / "glyphicons-halflings-regular.woff").exists()


def test_asvs_own_index_page_is_fully_localized(tmp_path: Path) -> None:
    import asv

    template = Path(asv.__file__).parent / "www" / "index.html"
    shutil.copy(template, tmp_path / "index.html")
    assert localize(tmp_path) == [], "asv asks for a CDN file we do not vendor"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium for a real browser")
def test_the_dashboard_renders_a_decode_graph_in_headless_chromium(tmp_path: Path, pytester: pytest.Pytester) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    repo = pytester.path
    (repo / "asv.conf.json").write_text((ROOT / "asv.conf.json").read_text())
    pytester.makepyfile(
        test_d="""
        import pytest

        @pytest.mark.decode_perf(stream=("baseline", "pipelined"), new_tokens=8)
        def test_decode():
            pass
        """
    )
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=repo, check=True)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--decodeperf",
            "--decodeperf-asv",
            "--decodeperf-rounds=2",
            "--decodeperf-max-time=0",
            "--benchmark-disable",
            "-p",
            "no:cacheprovider",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout
    shot = subprocess.run(
        [sys.executable, str(ROOT / "scripts/dashboard_screenshot.py"), "--out", "shots"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert shot.returncode == 0, shot.stderr
    graph = repo / "shots" / "graph.png"
    assert graph.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # asv's "Can not determine continental origin of swallow" error page is small and plain;
    # a rendered graph with its legend and axes is several times larger.
    assert graph.stat().st_size > 50_000, "the dashboard did not render (offline scripts missing?)"
