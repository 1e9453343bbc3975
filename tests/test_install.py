"""A fresh machine installs exactly what was tested: one lock, one Python line, one test command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PYTHON_LINE = (REPO / ".python-version").read_text().strip()


def _locked(name: str) -> dict[str, str]:
    """Package name -> pinned version of a lock in requirements/; every pin carries a hash."""
    text = (REPO / "requirements" / name).read_text()
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.splitlines()[0]
        if first.startswith("#") or not first.strip():
            continue
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+)==([^ ;\\]+)", first)
        assert match, f"{name}: {first!r} is not an exact pin"
        assert "--hash=sha256:" in block, f"{name}: {match[1]} has no hash"
        pins[canonicalize_name(match[1].split("[")[0])] = match[2]
    return pins


def _readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", readme)[:2]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    runtime, dev = _locked("runtime.txt"), _locked("dev.txt")
    declared = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    extras = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]]
    for lock, requirements in ((runtime, declared), (dev, declared + extras)):
        for req in requirements:
            version = lock.get(canonicalize_name(req.name))
            assert version is not None, f"{req.name} is declared but not locked"
            assert req.specifier.contains(Version(version), prereleases=True), (
                f"{req.name}=={version} in the lock is outside {req} in pyproject.toml"
            )


def test_the_dev_lock_runs_what_the_runtime_lock_ships() -> None:
    runtime, dev = _locked("runtime.txt"), _locked("dev.txt")
    differing = {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v}
    assert not differing, f"runtime and dev locks disagree: {differing}"


def test_ci_runs_exactly_the_readme_test_command_from_the_lock() -> None:
    run_line, test_line = _readme_commands()
    ci = (REPO / ".ci" / "run").read_text().rstrip().splitlines()[-1]
    assert ci == test_line
    assert "--require-hashes -r requirements/dev.txt" in test_line
    assert "--require-hashes -r requirements/runtime.txt" in run_line
    assert run_line.endswith("delegate run")


def test_one_python_line_everywhere() -> None:
    assert re.fullmatch(r"3\.\d+", PYTHON_LINE)
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^FROM python:(\d+\.\d+\.\d+)-slim-\w+$", dockerfile, re.M)
    assert base, "the Dockerfile's base image is not pinned to an exact Python tag"
    assert base[1].rsplit(".", 1)[0] == PYTHON_LINE
    assert "--require-hashes -r requirements/runtime.txt" in dockerfile
    assert PYPROJECT["tool"]["mypy"]["python_version"] == PYTHON_LINE
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + PYTHON_LINE.replace(".", "")
    for lock in ("runtime.txt", "dev.txt"):
        header = (REPO / "requirements" / lock).read_text().splitlines()[1]
        assert f"--python-version {PYTHON_LINE}" in header, f"{lock} was made for another Python"
