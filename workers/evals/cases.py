"""The case formats of the suites (docs/EVALS.md), and reading suite files.

A suite file is JSON Lines: one case per line; blank lines and lines starting with `#` are
skipped. A case with a `request` is an intake case; one with a `deliverable` is a verify case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workers.evals.fields import FIELDS
from workers.workorder import WorkloadClass

SHIPPED = ("intake", "verify")
Decision = Literal["chat", "ask", "draft"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ThreadTurn(_Strict):
    role: Literal["requester", "delegate"]
    text: str = Field(min_length=1)


class IntakeExpectation(_Strict):
    decision: Decision
    missing: list[str] = Field(
        default_factory=list, description="decision=ask: the fields good intake asks about"
    )
    workload_class: WorkloadClass | None = None
    deliverable: list[str] = Field(
        default_factory=list, description="words of which the draft's deliverable names one"
    )
    criteria: list[list[str]] = Field(
        default_factory=list,
        description="criteria that must be there: each a list of words, one of which some "
        "acceptance criterion of the draft contains",
    )

    @model_validator(mode="after")
    def _consistent(self) -> IntakeExpectation:
        unknown = sorted(set(self.missing) - set(FIELDS))
        if unknown:
            raise ValueError(f"missing: unknown fields {unknown}; expected some of {list(FIELDS)}")
        if self.decision == "ask" and not self.missing:
            raise ValueError("decision=ask needs the missing fields")
        if self.decision != "ask" and self.missing:
            raise ValueError("missing fields only go with decision=ask")
        return self


class IntakeCase(_Strict):
    id: str = Field(min_length=1)
    request: str = Field(min_length=1)
    thread: list[ThreadTurn] = Field(
        default_factory=list, description="earlier turns of the conversation, oldest first"
    )
    context: str = Field(default="", description="a Slack message shared with the request")
    answers: list[str] = Field(
        default_factory=list, description="the requester's replies, one per round of questions"
    )
    expect: IntakeExpectation
    tags: list[str] = Field(default_factory=list)
    note: str = ""


class Criterion(_Strict):
    text: str = Field(min_length=1)
    met: bool | None = None
    why: str = ""


class CaseFeedback(_Strict):
    """People's thumbs on a deliverable, as counts (who pressed stays in the database)."""

    up: int = Field(ge=0)
    down: int = Field(ge=0)


class VerifyCase(_Strict):
    id: str = Field(min_length=1)
    title: str = Field(min_length=1)
    goal: str = Field(min_length=1)
    deliverable_spec: str = Field(default="A written answer.", min_length=1)
    workload_class: WorkloadClass = WorkloadClass.STANDARD
    criteria: list[Criterion] = Field(min_length=1)
    deliverable: str = Field(min_length=1)
    met: bool | None = Field(
        default=None,
        description="a label for the case as a whole (every criterion met, or not), for cases "
        "whose criteria are not labelled one by one (an exported reviewer decision)",
    )
    tags: list[str] = Field(default_factory=list)
    source: str = ""
    feedback: CaseFeedback | None = Field(
        default=None,
        description="an exported case: the 👍 / 👎 people gave the deliverable in Slack; "
        "not scored, for choosing and reading cases",
    )

    @model_validator(mode="after")
    def _labelled(self) -> VerifyCase:
        labelled = [c.met is not None for c in self.criteria]
        if all(labelled):
            if self.met is not None and self.met != all(c.met for c in self.criteria):
                raise ValueError("met contradicts the criteria's labels")
            return self
        if any(labelled):
            raise ValueError("label every criterion (met: true/false), or none and the case")
        if self.met is None:
            raise ValueError("no label: give each criterion `met`, or the case `met`")
        return self

    @property
    def per_criterion(self) -> bool:
        return all(c.met is not None for c in self.criteria)


Case = IntakeCase | VerifyCase


@dataclass(frozen=True)
class Suite:
    name: str
    kind: Literal["intake", "verify"]
    cases: list[IntakeCase] | list[VerifyCase]


class SuiteError(ValueError):
    """A suite file that cannot be read; the message names the file and line."""


def load_suite(spec: str) -> Suite:
    """A shipped suite by name (`intake`, `verify`) or a suite file by path."""
    if spec in SHIPPED:
        text = resources.files("workers.evals").joinpath(f"suites/{spec}.jsonl").read_text()
        return parse_suite(spec, text, source=f"shipped suite {spec}")
    path = Path(spec)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SuiteError(
            f"{spec}: cannot read the suite ({exc.strerror}); name a shipped suite "
            f"({', '.join(SHIPPED)}) or a .jsonl file"
        ) from None
    return parse_suite(path.stem, text, source=spec)


def parse_suite(name: str, text: str, *, source: str) -> Suite:
    intake: list[IntakeCase] = []
    verify: list[VerifyCase] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object")
            if "request" in raw:
                intake.append(IntakeCase.model_validate(raw))
            else:
                verify.append(VerifyCase.model_validate(raw))
        except (ValueError, ValidationError) as exc:
            raise SuiteError(f"{source}, line {number}: {_first_error(exc)}") from None
        case_id = str(raw["id"])
        if case_id in seen:
            raise SuiteError(f"{source}, line {number}: the id {case_id!r} is used twice")
        seen.add(case_id)
    if intake and verify:
        raise SuiteError(f"{source}: mixes intake and verify cases; keep one kind per file")
    if not intake and not verify:
        raise SuiteError(f"{source}: has no cases")
    if intake:
        return Suite(name, "intake", intake)
    return Suite(name, "verify", verify)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        return f"{where}: {error['msg']}" if where else str(error["msg"])
    return str(exc)


def dump_case(case: Case) -> str:
    """One line of a suite file."""
    return json.dumps(case.model_dump(mode="json", exclude_defaults=True), ensure_ascii=False)
