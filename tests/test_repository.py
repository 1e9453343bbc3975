"""The repository's own promises: README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_starts_with_a_run_command_and_a_test_command() -> None:
    run, test = _readme_commands()[:2]
    assert run.endswith("delegate run")
    assert test.endswith("pytest") and "ruff check bot workers" in test and "mypy bot workers" in test


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test = _readme_commands()[1]
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in lines


def test_dockerfile_runs_as_non_root_with_a_health_check() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", docker, re.M)
    assert "HEALTHCHECK" in docker and "/healthz" in docker
    assert 'CMD ["delegate", "run"]' in docker


def test_tests_read_nothing_outside_the_repository() -> None:
    """A fresh clone alone runs the suite: test data lives in tests/data, not next to the checkout."""
    outside = re.compile(
        r"""ROOT\.parent|REPO\.parent|\.parent\.parent\.parent|["']\.\./|["']/(work|home|Users|srv|opt)/"""
    )
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        depth = len(path.relative_to(ROOT).parts) - 1  # parents[depth] is the repository root
        for n, line in enumerate(path.read_text().splitlines(), 1):
            too_far = any(int(k) > depth for k in re.findall(r"parents\[(\d+)\]", line))
            if path != Path(__file__).resolve() and (too_far or outside.search(line)):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "tests refer to paths outside the repository:\n" + "\n".join(offenders)
