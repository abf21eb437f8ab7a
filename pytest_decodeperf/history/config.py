"""asv's config, this checkout's commit, and this machine's name: what history is filed under.

asv's own helpers do the work (its ``Config``, its ``Git`` repository class, its machine file);
this module only turns their failures into one-line errors.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from asv import util as asv_util
from asv.config import Config
from asv.machine import MachineCollection
from asv.plugins.git import Git

from ..errors import DecodePerfError
from ..git import git

# What asv raises on a file it cannot use.
BROKEN = (asv_util.UserError, ValueError, TypeError, KeyError, AttributeError, IndexError, UnicodeDecodeError)


@dataclass(frozen=True)
class AsvConfig:
    path: Path
    results_dir: Path
    html_dir: Path
    repo: str  # an absolute path when local
    branches: list[str]


def read_asv_conf(path: str | Path = "asv.conf.json") -> AsvConfig:
    """asv's config, its directories resolved against the file's folder as asv itself does."""
    conf_path = Path(path).resolve()
    if not conf_path.is_file():
        raise DecodePerfError(f"asv config {path} not found (asv.conf.json with results_dir and html_dir)")
    try:
        conf = Config.load(str(conf_path))
        results_dir, html_dir, repo = str(conf.results_dir), str(conf.html_dir), str(conf.repo)
        branches = [str(b) for b in conf.branches]
    except BROKEN as exc:
        raise DecodePerfError(f"asv config {path} is invalid: {exc}") from None
    root = conf_path.parent
    local = (root / repo).resolve()
    return AsvConfig(conf_path, root / results_dir, root / html_dir, str(local) if local.exists() else repo, branches)


def local_repo(repo_dir: str | Path | None) -> Git | None:
    """asv's ``Git`` for the checkout that holds ``repo_dir``; None outside one.

    Only the top of a local repository is handed to asv: given anything else, asv would clone it.
    """
    top = git(repo_dir, "rev-parse", "--show-toplevel") if repo_dir is not None else None
    if top is None:
        return None
    try:
        return Git(top, top)
    except (asv_util.UserError, asv_util.ProcessError, OSError):
        return None


def current_commit(repo_dir: str | Path = ".") -> str | None:
    """HEAD's full hash; None outside a git checkout (asv files results by commit, so none can be kept)."""
    repo = local_repo(repo_dir)
    try:
        return str(repo.get_hash_from_name("HEAD")) if repo is not None else None
    except (asv_util.UserError, asv_util.ProcessError, OSError):
        return None  # a repository without a commit yet


def commit_date_ms(repo_dir: str | Path | None, commit: str) -> int | None:
    """The commit's author date in ms, the date ``asv run`` gives a result file (asv's ``Git.get_date``)."""
    repo = local_repo(repo_dir)
    try:
        return int(repo.get_date(commit)) if repo is not None else None
    except (asv_util.UserError, asv_util.ProcessError, OSError, ValueError, IndexError):
        return None


def machine_name(name: str | None = None) -> str:
    """The name asv would use here: ``~/.asv-machine.json``'s entry for this host, else the hostname."""
    node = platform.uname().node
    try:
        return name or str(MachineCollection.load(node).get("machine", node))
    except (*BROKEN, OSError):
        return node
