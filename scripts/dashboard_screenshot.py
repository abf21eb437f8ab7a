"""Build asv's dashboard from the history and photograph it in headless Chromium.

    python scripts/dashboard_screenshot.py [--config asv.conf.json] [--out dashboard] [--benchmark NAME]

Publishes (restoring pytest's benchmark entries first), serves the HTML on 127.0.0.1 as
``asv preview`` would, and writes ``index.png`` (the benchmark list) and ``graph.png`` (one
decode metric's graph) with Chromium (Debian package ``chromium``).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from pytest_decodeperf.history.config import read_asv_conf

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,900",
    "--virtual-time-budget=15000",
]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(browser: str, url: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", url],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="asv.conf.json")
    p.add_argument("--out", type=Path, default=Path("dashboard"))
    p.add_argument("--benchmark", default=None, help="graph to photograph (default: the first decode metric)")
    args = p.parse_args()
    browser = chromium()
    if browser is None:
        print("no chromium found: apt-get install chromium", file=sys.stderr)
        return 2
    conf = read_asv_conf(args.config)
    subprocess.run([sys.executable, "-m", "pytest_decodeperf", "publish", "--config", args.config], check=True)
    index = json.loads((conf.html_dir / "index.json").read_text())
    names = sorted(n for n in index["benchmarks"] if n.endswith("time_decode_per_token"))
    bench = args.benchmark or (names[0] if names else sorted(index["benchmarks"])[0])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(conf.html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        screenshot(browser, base + "index.html", args.out / "index.png")
        screenshot(browser, base + f"index.html#{bench}", args.out / "graph.png")
        screenshot(browser, base + "index.html#regressions", args.out / "regressions.png")
    finally:
        server.shutdown()
    print(f"benchmark graphed: {bench}")
    for name in ("index.png", "graph.png", "regressions.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
