"""Which code made a run: package versions and gradscope's own source commit.

``source_commit()`` asks git in the folder gradscope is imported from (not the current
directory, which may be any project or none), and only when that folder is the checkout's own
``gradscope/`` package; otherwise it reports the installed distribution (its version and the
commit pip recorded in ``direct_url.json`` for a ``git+`` install). When no commit can be
known, the answer says why, never a bare "unknown".
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

import gradscope

_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "h5py")


def package_versions() -> dict:
    """Versions of what shapes the numbers in a run: gradscope, torch, torchvision, numpy,
    scipy, h5py, the HDF5 library, Python and the platform."""
    out = {"gradscope": gradscope.__version__}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        import h5py  # noqa: PLC0415 - only for the HDF5 library's version

        out["hdf5"] = h5py.version.hdf5_version
    except ImportError:
        out["hdf5"] = "not installed"
    out["python"] = platform.python_version()
    out["platform"] = platform.platform(terse=True)
    return out


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                          env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})


def _from_checkout(pkg: Path) -> tuple[Optional[str], str]:
    """(commit, '') from the git checkout that holds ``pkg``, or (None, why not)."""
    try:
        top = _git(["rev-parse", "--show-toplevel"], pkg)
    except FileNotFoundError:
        return None, "git is not installed"
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"git failed ({e.__class__.__name__})"
    if top.returncode != 0:
        err = (top.stderr.strip().splitlines() or [""])[0]
        if "dubious ownership" in err:
            return None, f"git refuses {pkg.parent} (owned by another user; see `git config safe.directory`)"
        return None, f"{pkg.parent} is not a git checkout"
    root = Path(top.stdout.strip())
    try:
        if (root / "gradscope").resolve() != pkg.resolve():
            return None, f"{pkg} lies inside the git checkout {root} but is not its gradscope/ package"
        head = _git(["rev-parse", "HEAD"], root)
        if head.returncode != 0:
            return None, f"the git checkout {root} has no commit yet"
        dirty = _git(["status", "--porcelain", "--untracked-files=no"], root)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"git failed ({e.__class__.__name__})"
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else ""), ""


def _url_path(url: str) -> Optional[Path]:
    from urllib.parse import unquote, urlparse  # noqa: PLC0415

    u = urlparse(url)
    return Path(unquote(u.path)) if u.scheme == "file" else None


def _from_distribution(pkg: Path) -> tuple[Optional[str], str]:
    """(description, '') from the installed gradscope distribution that ``pkg`` belongs to,
    or (None, why not)."""
    try:
        dist = metadata.distribution("gradscope")
    except metadata.PackageNotFoundError:
        return None, "gradscope is not installed as a package either"
    desc = f"installed gradscope {dist.version}"
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "null")
    except ValueError:
        direct = None
    direct = direct if isinstance(direct, dict) else {}
    url = str(direct.get("url", ""))
    editable = bool((direct.get("dir_info") or {}).get("editable"))
    src = _url_path(url) if editable else Path(str(dist.locate_file("")))
    try:
        ours = src is not None and (src / "gradscope").resolve() == pkg
    except OSError:
        ours = False
    if not ours:
        return None, f"the gradscope imported from {pkg} is not the {desc} ({url or src})"
    vcs = direct.get("vcs_info") or {}
    if vcs.get("commit_id"):
        return f"{vcs['commit_id']} ({desc} from {url})", ""
    if editable:
        return None, f"{desc} is an editable install of {url}, which is not a git checkout"
    return None, f"{desc} from {url or 'a package index'}, which records no commit"


def source_commit() -> str:
    """gradscope's source commit: ``<sha>`` (``+`` when tracked files have uncommitted
    changes) from the checkout it runs from; else ``<sha> (installed gradscope X from URL)``
    from pip's record of a ``git+`` install; else ``unknown: <why>``."""
    pkg = Path(gradscope.__file__).resolve().parent
    sha, why_git = _from_checkout(pkg)
    if sha:
        return sha
    desc, why_dist = _from_distribution(pkg)
    if desc:
        return desc
    return f"unknown: {why_git}; {why_dist}"
