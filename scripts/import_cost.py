"""What loading the plugin costs a project that has no decode perf tests (issue 11's target).

Runs ``pytest --co -q`` in an empty project, alternately with the plugin and with
``-p no:decodeperf``, and prints the medians and their difference. Target: within 0.15 s.

    python scripts/import_cost.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(cwd: Path, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *extra],
        cwd=cwd,
        capture_output=True,
        check=False,
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "test_plain.py").write_text("def test_one():\n    assert True\n")
        one(project)  # warm the file cache
        with_plugin, without = [], []
        for _ in range(args.runs):  # alternate, so both see the same machine
            with_plugin.append(one(project))
            without.append(one(project, "-p", "no:decodeperf"))
    a, b = statistics.median(with_plugin), statistics.median(without)
    print(
        f"pytest --co -q, median of {args.runs}: with the plugin {a:.3f} s, -p no:decodeperf {b:.3f} s, +{a - b:.3f} s"
    )
    return 0 if a - b <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
