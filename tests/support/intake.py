"""Scripted intake-model replies: the questions, chat answer or draft the intake model decides on."""

from __future__ import annotations

from typing import Any

from tests.fakes.anthropic import Reply


def questions(*qs: str) -> Reply:
    return Reply.tool("intake_decision", {"kind": "questions", "questions": list(qs)})


def chat(answer: str) -> Reply:
    return Reply.tool("intake_decision", {"kind": "chat", "answer": answer})


def draft(**fields: Any) -> Reply:
    body: dict[str, Any] = {
        "title": "Competitor pricing one-pager",
        "goal": "Summarise the public pricing of Acme, Globex and Initech.",
        "deliverable": "A markdown table with one row per competitor and a short commentary.",
        "acceptance_criteria": [
            "Covers Acme, Globex and Initech",
            "Every price cites a source URL",
            "Fits on one page",
        ],
        "workload_class": "standard",
        "authority_policy": "research",
        "reviewers": [],
        "deadline": None,
        "open_points": [],
    }
    body.update(fields)
    return Reply.tool("intake_decision", {"kind": "draft", "draft": body})
