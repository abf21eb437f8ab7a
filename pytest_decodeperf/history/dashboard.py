"""Make asv's published dashboard work offline: serve its CDN scripts from local copies.

asv 0.6 writes ``<script src="https://cdnjs...">`` into its pages; without internet the page only
says "Can not determine continental origin of swallow". The copies ship in ``dashboard_assets``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ASSETS = Path(__file__).with_name("dashboard_assets")
VENDOR_DIR = "vendor"

CDN_TO_LOCAL: dict[str, str] = {
    "https://code.jquery.com/jquery-3.3.1.min.js": "jquery-3.3.1.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js": "jquery.flot-0.8.3.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js": "jquery.flot.time-0.8.3.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js": "jquery.flot.selection-0.8.3.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js": (
        "jquery.flot.categories-0.8.3.js"
    ),
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js": "jquery.flot.orderBars.js",
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js": "stupidtable-1.1.3.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js": "md5-2.19.0.min.js",
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js": "bootstrap-3.1.1.min.js",
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css": "bootstrap-3.1.1.min.css",
}


def localize(html_dir: Path) -> list[str]:
    """Copy the vendored files into ``html_dir/vendor`` and point every page at them.

    Returns the CDN addresses still left in the pages (empty when all were replaced).
    """
    html_dir = Path(html_dir)
    vendor = html_dir / VENDOR_DIR
    shutil.copytree(ASSETS, vendor, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md"))
    # bootstrap's css finds its glyph fonts at ../fonts/ relative to itself.
    shutil.copytree(ASSETS / "fonts", html_dir / "fonts", dirs_exist_ok=True)
    left: list[str] = []
    for page in html_dir.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        for url, local in CDN_TO_LOCAL.items():
            text = text.replace(url, f"{VENDOR_DIR}/{local}")
        # The pages pin the CDN files' hashes (integrity=...); the local copies are checked into
        # the package instead, and some differ in bytes (flot unminified, stupidtable 1.1.3).
        text = re.sub(rf'(<[^>]+(?:src|href)="{VENDOR_DIR}/[^"]+"[^>]*?)\s+integrity="[^"]*"', r"\1", text)
        page.write_text(text, encoding="utf-8")
        left += [url for url in _external_refs(text)]
    return sorted(set(left))


def _external_refs(text: str) -> list[str]:
    return [m for m in re.findall(r'(?:src|href)="(https?://[^"]+\.(?:js|css))"', text)]
