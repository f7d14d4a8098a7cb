"""What the install promises (issue 15): gradscope knows which source made a run; packaging
metadata and the install script agree on pins, extras and where things are written."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PY, ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

HAS_GIT = shutil.which("git") is not None and (ROOT / ".git").exists()


def _source_commit(pythonpath: Path, cwd: Path) -> str:
    code = "from gradscope.provenance import source_commit; print(source_commit())"
    r = subprocess.run([PY, "-c", code], cwd=cwd, env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _copy_package(dst: Path) -> None:
    shutil.copytree(ROOT / "gradscope", dst / "gradscope", ignore=shutil.ignore_patterns("__pycache__"))


@pytest.mark.skipif(not HAS_GIT, reason="needs git and a git checkout of gradscope")
def test_source_commit_is_the_package_checkout_not_the_cwd(tmp_path):
    """Run from inside another git repository: the answer is gradscope's commit, not that repo's."""
    other = tmp_path / "other"
    other.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=other, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=other, check=True)
    theirs = subprocess.run(["git", "rev-parse", "HEAD"], cwd=other, capture_output=True, text=True).stdout.strip()
    ours = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    got = _source_commit(ROOT, other)
    assert re.fullmatch(r"[0-9a-f]{40}\+?", got) and got.rstrip("+") == ours != theirs


def test_source_commit_outside_a_checkout_says_why(tmp_path):
    """A copy of the package that is neither a checkout nor the installed distribution."""
    _copy_package(tmp_path / "copy")
    got = _source_commit(tmp_path / "copy", tmp_path)
    assert got.startswith("unknown: ") and "is not a git checkout" in got
    assert f"the gradscope imported from {tmp_path / 'copy' / 'gradscope'} is not the installed" in got or \
        "not installed as a package" in got


def test_source_commit_from_a_git_install_record(tmp_path):
    """pip's direct_url.json of a `pip install git+URL@sha` gives the commit."""
    site = tmp_path / "site"
    _copy_package(site)
    info = site / "gradscope-9.9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gradscope\nVersion: 9.9.9\n")
    sha = "0123456789abcdef0123456789abcdef01234567"
    (info / "direct_url.json").write_text(json.dumps(
        {"url": "https://example.org/gradscope.git", "vcs_info": {"vcs": "git", "commit_id": sha}}))
    got = _source_commit(site, tmp_path)
    assert got == f"{sha} (installed gradscope 9.9.9 from https://example.org/gradscope.git)"
    (info / "direct_url.json").unlink()  # from a package index: no commit, and it says so
    assert _source_commit(site, tmp_path) == "unknown: " + f"{site} is not a git checkout; installed gradscope " \
        "9.9.9 from a package index, which records no commit"


def test_package_versions_names_the_numbers_shapers():
    from gradscope.provenance import package_versions
    v = package_versions()
    import torch
    assert v["torch"] == torch.__version__.split("+")[0] or v["torch"] == torch.__version__
    assert {"gradscope", "numpy", "scipy", "h5py", "hdf5", "python", "torchvision"} <= set(v)


# ----------------------------------------------------------------------------- packaging
def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_with_its_file():
    p = _pyproject()
    assert p["project"]["license"] == "MIT" and p["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "gradscope contributors" in text
    req = p["build-system"]["requires"][0]
    assert int(re.search(r">=\s*(\d+)", req).group(1)) >= 77  # setuptools that reads SPDX strings


def test_pins_agree_and_metadata_allows_newer_torch():
    deps = {re.split(r"[<>=!~ ;]", d)[0]: d for d in _pyproject()["project"]["dependencies"]}
    assert deps["torch"].replace(" ", "") == "torch>=2.6"  # weights_only=True safe loading needs torch >= 2.6
    venv = (ROOT / "scripts" / "_venv.sh").read_text()
    env = (ROOT / "environment.yml").read_text()
    pins = re.search(r'GRADSCOPE_TORCH:-(torch==\S+) (torchvision==[^"}]+)', venv).groups()
    for pin in pins:
        assert f"- {pin}" in env, pin


def test_install_script_writes_only_inside_the_project_and_pulls_in_jupyter():
    venv = (ROOT / "scripts" / "_venv.sh").read_text()
    code = "\n".join(line for line in venv.splitlines() if not line.lstrip().startswith("#"))
    assert "--user" not in code
    kernel = re.search(r"ipykernel install (.*)", code).group(1)
    assert "--sys-prefix" in kernel and "--name gradscope" in kernel
    extras = re.search(r'-e "\$ROOT\[([^\]]+)\]"', code).group(1).split(",")
    assert {"test", "notebooks"} <= set(extras)
    nb = _pyproject()["project"]["optional-dependencies"]["notebooks"]
    assert any(d.startswith("jupyterlab") for d in nb) and any(d.startswith("ipywidgets") for d in nb)
