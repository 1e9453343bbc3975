"""`delegate eval`: scoring checked against hand-computed values, and the command run for real
against the fake Anthropic and OpenAI servers with scripted answers, so every score is known."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.anthropic import Reply as AnthropicReply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai import Reply as OpenAIReply
from tests.support.cli import cli_env, delegate, provider_env
from tests.support.databases import Database
from tests.support.factories import make_order
from workers import queue, review
from workers.config import Settings
from workers.evals.cases import SuiteError, load_suite, parse_suite
from workers.evals.fields import field_of
from workers.evals.redact import redact
from workers.evals.scoring import Run, cohen_kappa, f1, verify_scores
from workers.store import Store
from workers.workorder import Status, Verification

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

USAGE = {"input_tokens": 1000, "output_tokens": 100}
# claude-haiku-4-5: $1 in, $5 out per million tokens: 1000 * 1 + 100 * 5 = 1500 micro-dollars.
HAIKU_CALL = 1500
# gpt-5-mini: $0.25 in, $2 out: 1000 * 0.25 + 100 * 2 = 450 micro-dollars.
MINI_CALL = 450


# ------------------------------------------------------------------ scoring by hand


def test_kappa_f1_and_rates_match_hand_computed_values() -> None:
    # 10 criteria: 6 met, 4 not. The verifier passes 5 of the met and 1 of the not met.
    # agreement po = (5 + 3) / 10 = 0.8; P(label met) = 0.6, P(passed) = 6/10 = 0.6;
    # chance pe = 0.6 * 0.6 + 0.4 * 0.4 = 0.52; kappa = (0.8 - 0.52) / (1 - 0.52) = 0.58333…
    pairs = [(True, True)] * 5 + [(True, False)] + [(False, True)] + [(False, False)] * 3
    assert cohen_kappa(pairs) == pytest.approx(0.28 / 0.48)
    # Perfect agreement on a balanced set: po = 1, pe = 0.5, kappa = 1.
    assert cohen_kappa([(True, True), (False, False)]) == pytest.approx(1.0)
    # Both sides always "met": chance agreement is certain and kappa is undefined.
    assert cohen_kappa([(True, True)] * 3) is None
    # TP 3, FP 1, FN 2: precision 3/4, recall 3/5, F1 = 2*3 / (2*3 + 1 + 2) = 6/9.
    assert f1(3, 1, 2) == pytest.approx(2 / 3)
    assert f1(0, 0, 0) is None


def _verify_suite(text: str) -> Any:
    return parse_suite("v", text, source="test")


def test_verify_scores_per_criterion_and_per_case() -> None:
    suite = _verify_suite(
        "\n".join(
            json.dumps(c)
            for c in [
                {"id": "a", "title": "t", "goal": "g", "deliverable": "d",
                 "criteria": [{"text": "x", "met": True}, {"text": "y", "met": False}]},
                {"id": "b", "title": "t", "goal": "g", "deliverable": "d", "met": False,
                 "criteria": [{"text": "x"}, {"text": "y"}, {"text": "z"}]},
            ]
        )
    )  # fmt: skip
    a, b = suite.cases
    # a: (met, passed), (not met, passed): one false accept. b, labelled as a whole (not met):
    # every criterion passed, so the case passed: a second false accept, one unit.
    scores = verify_scores(
        [(a, {"passed": [True, True]}, Run(1000, 200)), (b, {"passed": [True, True, True]}, Run(3000, 400))]
    )
    assert scores["units"] == 3
    assert scores["accuracy"] == pytest.approx(1 / 3)
    assert scores["false_accept"] == 1.0  # 2 of the 2 not-met units passed
    assert scores["false_reject"] == 0.0
    # labels met 1/3, verdicts passed 3/3: pe = 1/3 * 1 + 2/3 * 0 = 1/3, po = 1/3, kappa 0.
    assert scores["kappa"] == pytest.approx(0.0)
    assert scores["cost_usd_total"] == 0.004 and scores["cost_usd_per_case"] == 0.002
    assert scores["latency_s_per_case"] == 0.3


def test_questions_map_to_the_fields_they_ask_about() -> None:
    assert field_of("By when do you need this?") == "deadline"
    assert field_of("Who is the audience for the email?") == "audience"
    assert field_of("Which data source should I use for churn?") == "sources"
    assert field_of("What format should it be in: slides or a doc?") == "deliverable"
    assert field_of("What would success look like for this?") == "criteria"
    assert field_of("Which regions should it cover?") == "scope"
    assert field_of("What should the blog post be about?") == "scope"
    # Order decides between fields a question touches: the topic of a deck is scope, the
    # choice between slides and a doc is the deliverable, an unnamed document is a source.
    assert field_of("What topics should the deck cover?") == "scope"
    assert field_of("Should it be slides or a written doc?") == "deliverable"
    assert field_of("Which doc do you mean? Can you paste a link?") == "sources"
    assert field_of("Is this for internal use or for customers?") == "audience"
    assert field_of("Hello?") == "other"


def test_a_verify_case_is_labelled_per_criterion_or_as_a_whole_never_half() -> None:
    half = {"id": "h", "title": "t", "goal": "g", "deliverable": "d",
            "criteria": [{"text": "x", "met": True}, {"text": "y"}]}  # fmt: skip
    with pytest.raises(SuiteError, match=r"line 1: .*label every criterion"):
        _verify_suite(json.dumps(half))
    with pytest.raises(SuiteError, match="no label"):
        _verify_suite(json.dumps({**half, "criteria": [{"text": "x"}]}))


def test_the_shipped_suites_have_enough_cases_of_every_kind() -> None:
    intake = load_suite("intake")
    verify = load_suite("verify")
    assert intake.kind == "intake" and len(intake.cases) >= 60
    assert verify.kind == "verify" and len(verify.cases) >= 60
    decisions = {c.expect.decision for c in intake.cases}  # type: ignore[union-attr]
    assert decisions == {"chat", "ask", "draft"}
    labels = [c.met for case in verify.cases for c in case.criteria]  # type: ignore[union-attr]
    assert labels.count(False) >= 30 and labels.count(True) >= 60
    for tag in ("numbers", "skipped", "unsourced"):
        assert sum(tag in c.tags for c in verify.cases) >= 5, tag


def test_redaction_replaces_people_addresses_and_secrets_and_keeps_amounts() -> None:
    text = (
        "Ask <@U0123ABCD> or ann@acme.com, see <https://acme.com/q3|the sheet> in <#C0999XYZ1|fin>;"
        " key sk-ant-abcdef1234567890, card 4111 1111 1111 1111. Revenue $1,204,330 in 2025."
    )
    assert redact(text, ["not-in-text-secret"]) == (
        "Ask [person] or [email], see [url] in [channel]; key [secret], card [number]. "
        "Revenue $1,204,330 in 2025."
    )


# ------------------------------------------------------------------ end to end, against the fakes


def _messages(body: dict[str, Any]) -> str:
    return json.dumps(body.get("messages") or body.get("input"))


def _intake_answer(body: dict[str, Any]) -> AnthropicReply:
    text = _messages(body)

    def decide(decision: dict[str, Any]) -> AnthropicReply:
        return AnthropicReply.tool("intake_decision", decision, usage=USAGE)

    if "ARR stand for" in text:
        return decide({"kind": "chat", "answer": "Annual recurring revenue."})
    if "launch email" in text and "Customers; by Friday" not in text:
        return decide(
            {"kind": "questions",
             "questions": ["Who is the audience for the email?", "What format should it be in?"]}
        )  # fmt: skip
    if "launch email" in text:
        return decide(_draft("quick", "An email to customers", ["Mentions the launch date", "Under 200 words"]))
    if "Q3 churn" in text:
        return decide({"kind": "questions", "questions": ["Which quarter?"]})
    assert "competitors" in text
    return decide(_draft("deep", "A markdown table", ["Every price cites a source URL", "Covers all three competitors"]))


def _draft(workload: str, deliverable: str, criteria: list[str]) -> dict[str, Any]:
    return {
        "kind": "draft",
        "draft": {
            "title": "T",
            "goal": "G",
            "deliverable": deliverable,
            "acceptance_criteria": criteria,
            "workload_class": workload,
            "authority_policy": "default",
        },
    }


INTAKE_CASES = [
    {"id": "i1", "request": "What does ARR stand for?", "expect": {"decision": "chat"}},
    {"id": "i2", "request": "Write the launch email", "answers": ["Customers; by Friday"],
     "expect": {"decision": "ask", "missing": ["audience", "deadline"], "workload_class": "quick",
                "deliverable": ["email"]}},
    {"id": "i3", "request": "Summarise Q3 churn from the attached CSV into a one-page memo for the "
     "exec team by Thursday",
     "expect": {"decision": "draft", "workload_class": "standard", "deliverable": ["memo"],
                "criteria": [["churn"], ["one page", "one-page"]]}},
    {"id": "i4", "request": "Compare the pricing of our three competitors in a table, with sources",
     "expect": {"decision": "draft", "workload_class": "standard", "deliverable": ["table"],
                "criteria": [["source"], ["three", "all"]]}},
]  # fmt: skip

VERIFY_CASES = [
    {"id": "v1", "title": "Case v1", "goal": "g", "deliverable": "the work",
     "criteria": [{"text": "a", "met": True}, {"text": "b", "met": True}, {"text": "c", "met": False}]},
    {"id": "v2", "title": "Case v2", "goal": "g", "deliverable": "the work",
     "criteria": [{"text": "a", "met": False}, {"text": "b", "met": True}]},
    {"id": "v3", "title": "Case v3", "goal": "g", "deliverable": "the work", "met": False,
     "criteria": [{"text": "a"}, {"text": "b"}]},
]  # fmt: skip

# What each verifier says, per case: Haiku misses v1's third criterion; GPT-5 mini fails v1's
# second, passes v2's first and passes the whole of v3.
VERDICTS = {
    "anthropic": {"v1": [True, True, True], "v2": [False, True], "v3": [True, False]},
    "openai": {"v1": [True, False, False], "v2": [True, True], "v3": [True, True]},
}


def _verdicts(provider: str, body: dict[str, Any]) -> dict[str, Any]:
    case = next(c for c in VERDICTS[provider] if f"Case {c}" in _messages(body))
    return {
        "verdicts": [
            {"index": i, "passed": p, "reason": "checked"}
            for i, p in enumerate(VERDICTS[provider][case], 1)
        ]
    }


def _suites(tmp_path: Path) -> tuple[Path, Path]:
    intake = tmp_path / "intake-small.jsonl"
    intake.write_text("".join(json.dumps(c) + "\n" for c in INTAKE_CASES))
    verify = tmp_path / "verify-small.jsonl"
    verify.write_text("".join(json.dumps(c) + "\n" for c in VERIFY_CASES))
    return intake, verify


def _script(fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI, *, intake: int, verify: int) -> None:
    """Answers that depend on the request, not on the order requests arrive in (cases run
    concurrently)."""
    fake_anthropic.script(
        *[_intake_answer] * intake,
        *[lambda body: AnthropicReply.tool("record_verdicts", _verdicts("anthropic", body), usage=USAGE)] * verify,
    )
    fake_openai.script(
        *[lambda body: OpenAIReply.tool("record_verdicts", _verdicts("openai", body), usage=USAGE)] * verify
    )


ROUTES = (
    "--route", "intake=anthropic:claude-haiku-4-5",
    "--route", "verify=anthropic:claude-haiku-4-5",
    "--route", "verify=openai:gpt-5-mini",
)  # fmt: skip


def _env(fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI) -> dict[str, str]:
    return cli_env(**provider_env(fake_anthropic, fake_openai))


def _anthropic_calls(fake: FakeAnthropic, tool: str) -> int:
    return sum(any(t.get("name") == tool for t in r.get("tools") or []) for r in fake.requests)


async def test_eval_scores_intake_and_a_side_by_side_of_verifiers_exactly(
    tmp_path: Path, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    intake, verify = _suites(tmp_path)
    _script(fake_anthropic, fake_openai, intake=5, verify=3)
    out = tmp_path / "run"
    code, stdout, stderr = await delegate(
        "eval", "--suite", str(intake), "--suite", str(verify), *ROUTES, "--yes",
        "--max-usd", "1", "--out", str(out), "--min", "verify-small.kappa=0.6",
        "--max", "verify-small.false_accept=0.7",
        env=_env(fake_anthropic, fake_openai), cwd=tmp_path,
    )  # fmt: skip
    assert fake_anthropic.pending == 0 and fake_openai.pending == 0
    report = json.loads((out / "report.json").read_text())
    [intake_route] = report["suites"][0]["routes"]
    assert intake_route["route"] == "anthropic:claude-haiku-4-5"
    assert intake_route["scores"] == {
        "cases": 4,
        "decision_accuracy": 0.75,  # i1 chat, i2 ask, i4 draft right; i3 asked instead
        "ask_f1": 0.5,  # i2 asked audience (TP) and format (FP), not the deadline (FN): 2/4
        "over_asking": 0.5,  # of i3 and i4 (complete), i3 asked
        "workload_accuracy": pytest.approx(1 / 3),  # i2 quick; i3 no draft; i4 deep, not standard
        "deliverable_match": pytest.approx(2 / 3),  # email, table; i3 has no draft
        "criteria_recall": 0.5,  # i4's two groups found, i3's two not
        "rounds_per_case": 0.5,  # i2 and i3 asked once
        "cost_usd_total": 5 * HAIKU_CALL / 1e6,  # 5 calls: i2 took two
        "cost_usd_per_case": 5 * HAIKU_CALL / 4 / 1e6,
        "latency_s_per_case": intake_route["scores"]["latency_s_per_case"],
        "latency_s_p95": intake_route["scores"]["latency_s_p95"],
    }
    haiku, mini = report["suites"][1]["routes"]
    # Haiku: units (label, verdict) v1 (T,T)(T,T)(F,T), v2 (F,F)(T,T), v3 as a whole (F,F):
    # 5 of 6 agree; 1 of 3 not-met passed; 0 of 3 met failed; P(met) 1/2, P(passed) 4/6,
    # pe = 1/2 * 4/6 + 1/2 * 2/6 = 1/2, kappa = (5/6 - 1/2) / (1/2) = 2/3.
    assert {k: haiku["scores"][k] for k in ("units", "accuracy", "false_accept", "false_reject", "kappa", "cost_usd_total")} == {
        "units": 6, "accuracy": pytest.approx(5 / 6), "false_accept": pytest.approx(1 / 3),
        "false_reject": 0.0, "kappa": pytest.approx(2 / 3, abs=1e-6), "cost_usd_total": 3 * HAIKU_CALL / 1e6,
    }  # fmt: skip
    # GPT-5 mini: v1 (T,T)(T,F)(F,F), v2 (F,T)(T,T), v3 (F,T): 3 of 6 agree; 2 of 3 not-met
    # passed; 1 of 3 met failed; P(met) 1/2, P(passed) 1/2, pe = 1/2, kappa = 0.
    assert {k: mini["scores"][k] for k in ("accuracy", "false_accept", "false_reject", "kappa", "cost_usd_total")} == {
        "accuracy": 0.5, "false_accept": pytest.approx(2 / 3), "false_reject": pytest.approx(1 / 3),
        "kappa": 0.0, "cost_usd_total": 3 * MINI_CALL / 1e6,
    }  # fmt: skip
    assert report["spent_usd"] == pytest.approx((8 * HAIKU_CALL + 3 * MINI_CALL) / 1e6)
    # The side-by-side in Markdown, and its chart.
    markdown = (out / "report.md").read_text()
    assert "| kappa | 0.667 | 0.000 |" in markdown
    assert "v1: #3 labelled not met, verifier passed" in markdown
    assert (out / "chart.png").read_bytes().startswith(b"\x89PNG")
    # The gate: GPT-5 mini's kappa is below the minimum; both false-accept rates are under 0.7.
    assert code == 1, stderr
    assert (
        "threshold crossed: verify-small.kappa on openai:gpt-5-mini is 0, below the minimum 0.6"
        in stderr
    )
    assert "false_accept" not in stderr
    assert stdout.startswith("# Delegate eval")

    # Run again into the same directory: nothing is sent, the scores are the same, and with a
    # threshold every route meets the command succeeds.
    requests = len(fake_anthropic.requests), len(fake_openai.requests)
    code, _, stderr = await delegate(
        "eval", "--suite", str(intake), "--suite", str(verify), *ROUTES, "--yes",
        "--out", str(out), "--min", "verify-small.accuracy=0.5",
        env=_env(fake_anthropic, fake_openai), cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    assert (len(fake_anthropic.requests), len(fake_openai.requests)) == requests
    assert "10 cases were finished" in stderr
    again = json.loads((out / "report.json").read_text())
    assert again["suites"][1]["routes"][1]["scores"]["kappa"] == 0.0
    assert again["spent_usd"] == report["spent_usd"]


async def test_nothing_is_sent_without_yes_or_a_configured_budget(
    tmp_path: Path, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    intake, verify = _suites(tmp_path)
    code, stdout, stderr = await delegate(
        "eval", "--suite", str(intake), "--suite", str(verify), *ROUTES, "--out",
        str(tmp_path / "run"), env=_env(fake_anthropic, fake_openai), cwd=tmp_path,
    )  # fmt: skip
    assert code == 2
    # 4 intake cases on one route, 3 verify cases on two.
    assert stderr == (
        "delegate: not sending 10 eval cases to model providers without --yes (or a configured "
        "budget, evals.max_usd); they cost money\n"
    )
    assert stdout == ""
    assert fake_anthropic.requests == [] and fake_openai.requests == []
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--min", "verify-small.kapa=0.6"), "verify-small has no metric 'kapa'; one of accuracy,"),
        (("--max", "nosuch.kappa=1"), "no suite 'nosuch' in this run"),
        (("--route", "execute=openai:gpt-5"), "expected ROLE=PROVIDER:MODEL with ROLE one of intake, verify"),
        (("--route", "verify=openai:gpt-9"), "'gpt-9' has no entry in prices"),
    ],
)
async def test_usage_mistakes_are_refused_before_anything_is_sent(
    tmp_path: Path,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    args: tuple[str, ...],
    message: str,
) -> None:
    _, verify = _suites(tmp_path)
    code, _, stderr = await delegate(
        "eval", "--suite", str(verify), "--yes", *args, env=_env(fake_anthropic, fake_openai),
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 2 and message in stderr, stderr
    assert fake_anthropic.requests == [] and fake_openai.requests == []


async def test_a_configured_budget_stands_for_yes_and_a_spent_budget_stops_the_run(
    tmp_path: Path, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    _, verify = _suites(tmp_path)
    config = tmp_path / "delegate.yaml"
    config.write_text("evals: {max_usd: 0.01, concurrency: 1}\n")
    env = {**_env(fake_anthropic, fake_openai), "DELEGATE_CONFIG": str(config)}
    fake_anthropic.script(
        *[lambda body: AnthropicReply.tool("record_verdicts", _verdicts("anthropic", body), usage={"input_tokens": 5000, "output_tokens": 100})] * 3
    )
    out = tmp_path / "run"
    args = ("eval", "--suite", str(verify), "--route", "verify=anthropic:claude-haiku-4-5", "--out", str(out))
    code, _, stderr = await delegate(*args, env=env, cwd=tmp_path)
    # Each call reserves its worst case first (its input's bound, about 2,800 tokens, at Haiku's
    # dearest input rate, $1.25 per million, and its full output allowance at $5) and costs
    # 5000 * $1 + 100 * $5 per million = $0.0055: the first case fits in $0.01; the second's
    # reservation (over $0.005) does not fit in the $0.0045 left.
    sent = len(fake_anthropic.requests)
    assert sent == 1
    assert code == 1
    assert "the budget of $0.01 is spent ($0.0055 charged" in stderr and "2 cases did not run" in stderr
    report = json.loads((out / "report.json").read_text())
    [route] = report["suites"][0]["routes"]
    assert route["done"] == 1 and len(route["not_run"]) == 2 and report["budget_stopped"]
    assert report["spent_usd"] <= 0.01

    # A larger budget over the same directory runs only the two left.
    code, _, stderr = await delegate(*args, "--max-usd", "1", env=env, cwd=tmp_path)
    assert code == 0, stderr
    assert len(fake_anthropic.requests) == 3 and fake_anthropic.pending == 0
    report = json.loads((out / "report.json").read_text())
    assert report["suites"][0]["routes"][0]["done"] == 3
    assert report["spent_usd"] == pytest.approx(3 * 5500 / 1e6)


# ------------------------------------------------------------------ reviewers' decisions as a suite


async def _deliver(store: Store, settings: Settings, order_id: str, content: str, n: int) -> int:
    """The order claimed, a deliverable submitted, and the order awaiting review."""
    claim = await queue.claim(store, settings, "w1")
    assert claim.order is not None and claim.order.id == order_id
    item = await store.runs.save_deliverable(
        order_id, tool_use_id=f"t{n}", content=content, summary="done", attempt_id=None, actor="w1"
    )
    await store.queue.finish_run(order_id, "w1", Status.AWAITING_REVIEW, reason="deliverable submitted")
    assert item.id is not None
    return item.id


async def test_reviewers_decisions_export_as_a_redacted_suite_that_evaluates(
    database: Database,
    tmp_path: Path,
    settings_factory: Any,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
) -> None:
    settings = settings_factory()
    store = Store(database.engine())
    criteria = ["Covers Acme, Globex and Initech", "Every price cites its source URL"]
    reviewed = Verification(automatic_checks=False, reviewers=["U2"])
    pricing = await store.orders.create_order(
        make_order(status=Status.AWAITING_CONFIRMATION, acceptance_criteria=criteria,
                   verification=reviewed), actor="U1",
    )  # fmt: skip
    assert pricing.id
    await queue.enqueue(store, settings, pricing.id, actor="U1")
    first = await _deliver(
        store, settings, pricing.id,
        "First draft: Acme $10 (https://acme.example/pricing), Globex $12. Ask ann@acme.com or "
        "<@U0123ABCD>; token sk-ant-abcdef1234567890.", 1,
    )  # fmt: skip
    # Thumbs on each version (a press counts for the version shown when it was made).
    await store.feedback.record_order_feedback(pricing.id, user="U5", rating="down")
    await review.decide(store, settings, pricing.id, "changes", actor="U2", feedback="Initech?")
    second = await _deliver(
        store, settings, pricing.id, "Second draft: Acme $10, Globex $12, Initech $9, sourced.", 2
    )
    await store.feedback.record_order_feedback(pricing.id, user="U6", rating="up")
    await store.feedback.record_order_feedback(pricing.id, user="U7", rating="up")
    await review.decide(store, settings, pricing.id, "approve", actor="U2", deliverable_id=second)
    memo = await store.orders.create_order(
        make_order(status=Status.AWAITING_CONFIRMATION, title="Churn memo", verification=reviewed),
        actor="U1",
    )
    assert memo.id
    await queue.enqueue(store, settings, memo.id, actor="U1")
    rejected = await _deliver(store, settings, memo.id, "Rejected work: churn fell 3 %.", 3)
    await review.decide(store, settings, memo.id, "reject", actor="U2", deliverable_id=rejected)
    # The requester approving their own work is no independent label: left out.
    own = await store.orders.create_order(make_order(status=Status.AWAITING_CONFIRMATION), actor="U1")
    assert own.id
    await queue.enqueue(store, settings, own.id, actor="U1")
    mine = await _deliver(store, settings, own.id, "My own work.", 4)
    await review.decide(store, settings, own.id, "approve", actor="U1", deliverable_id=mine)
    await store.close()

    suite = tmp_path / "private" / "decided.jsonl"
    env = cli_env(DATABASE_URL=database.url, **provider_env(fake_anthropic, fake_openai))
    code, out, err = await delegate(
        "eval", "export", "--since", "2026-11-01", "--redact", "--out", str(suite),
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert f"Exported 3 decisions since 2026-11-01 to {suite} (redacted); 1 self-approvals left out" in out
    cases = [json.loads(line) for line in suite.read_text().splitlines()]
    assert [(c["id"], c["met"], c["tags"]) for c in cases] == [
        (f"{pricing.id}-d{first}", False, ["changes"]),
        (f"{pricing.id}-d{second}", True, ["approve"]),
        (f"{memo.id}-d{rejected}", False, ["reject"]),
    ]
    assert [c["text"] for c in cases[0]["criteria"]] == criteria
    assert cases[0]["deliverable"] == (
        "First draft: Acme $10 ([url]), Globex $12. Ask [email] or [person]; token [secret]."
    )
    # People's thumbs ride along as counts per case (none: no key); who pressed is not there.
    assert [c.get("feedback") for c in cases] == [
        {"up": 0, "down": 1},
        {"up": 2, "down": 0},
        None,
    ]
    assert not {"U5", "U6", "U7"} & set(re.findall(r"U\d+", suite.read_text()))

    # The verifier passes the first draft (the reviewer sent it back), fails the rejected memo
    # and passes the approved second draft.
    def answer(body: dict[str, Any]) -> OpenAIReply:
        text = _messages(body)
        passed = "Rejected work" not in text
        verdicts = [{"index": i, "passed": passed, "reason": "r"} for i in (1, 2)]
        return OpenAIReply.tool("record_verdicts", {"verdicts": verdicts}, usage=USAGE)

    fake_openai.script(*[answer] * 3)
    run = tmp_path / "run"
    code, _, err = await delegate(
        "eval", "--suite", str(suite), "--route", "verify=openai:gpt-5-mini", "--yes",
        "--out", str(run), "--max", "decided.false_accept=0.5", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    [route] = json.loads((run / "report.json").read_text())["suites"][0]["routes"]
    # Units, one per case: (not met, passed), (met, passed), (not met, failed). Accuracy 2/3;
    # false accept 1/2; false reject 0/1; P(met) 1/3, P(passed) 2/3, pe = 1/3 * 2/3 + 2/3 * 1/3
    # = 4/9, po = 6/9, kappa = (6/9 - 4/9) / (5/9) = 2/5.
    assert {k: route["scores"][k] for k in ("units", "accuracy", "false_accept", "false_reject", "kappa")} == {
        "units": 3, "accuracy": pytest.approx(2 / 3), "false_accept": 0.5, "false_reject": 0.0,
        "kappa": pytest.approx(0.4),
    }  # fmt: skip


# ------------------------------------------------------------------ the shipped suites, end to end

ORACLE_QUESTIONS = {
    "deadline": "By when do you need this?",
    "audience": "Who is the audience?",
    "sources": "Which data source should I use?",
    "criteria": "What would success look like?",
    "deliverable": "What format should it be in?",
    "scope": "Which regions should it cover?",
}


def _escaped(text: str) -> str:
    return json.dumps(text)[1:-1]


async def test_an_oracle_scores_perfectly_on_every_shipped_case(
    tmp_path: Path, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    """A scripted model that answers each case as labelled scores 1 (and 0 where lower is
    better) on both shipped suites: every case goes through the real engine and verifier, and
    the labels, the field map and the scoring agree with each other."""
    intake, verify = load_suite("intake"), load_suite("verify")

    def intake_oracle(body: dict[str, Any]) -> AnthropicReply:
        text = _messages(body)
        [case] = [c for c in intake.cases if _escaped(c.request) in text]  # type: ignore[union-attr]
        expect = case.expect  # type: ignore[union-attr]
        answered = any(_escaped(a) in text for a in case.answers)  # type: ignore[union-attr]
        if expect.decision == "chat":
            decision: dict[str, Any] = {"kind": "chat", "answer": "An answer."}
        elif expect.decision == "ask" and not answered:
            decision = {"kind": "questions", "questions": [ORACLE_QUESTIONS[f] for f in expect.missing]}
        else:
            deliverable = (expect.deliverable or ["A written answer"])[0]
            criteria = [group[0] for group in expect.criteria] + ["States its assumptions"]
            decision = _draft(expect.workload_class or "standard", deliverable, criteria)
        return AnthropicReply.tool("intake_decision", decision, usage=USAGE)

    def verify_oracle(body: dict[str, Any]) -> OpenAIReply:
        text = _messages(body)
        [case] = [c for c in verify.cases if _escaped(c.deliverable) in text]  # type: ignore[union-attr]
        verdicts = [
            {"index": i, "passed": bool(c.met), "reason": c.why or "ok"}
            for i, c in enumerate(case.criteria, 1)  # type: ignore[union-attr]
        ]
        return OpenAIReply.tool("record_verdicts", {"verdicts": verdicts}, usage=USAGE)

    calls = len(intake.cases) + sum(
        1 for c in intake.cases if c.expect.decision == "ask" and c.answers  # type: ignore[union-attr]
    )
    fake_anthropic.script(*[intake_oracle] * calls)
    fake_openai.script(*[verify_oracle] * len(verify.cases))
    out = tmp_path / "run"
    code, _, stderr = await delegate(
        "eval", "--yes", "--concurrency", "8", "--route", "intake=anthropic:claude-haiku-4-5",
        "--route", "verify=openai:gpt-5-mini", "--out", str(out),
        "--min", "intake.decision_accuracy=1", "--min", "verify.kappa=1",
        env=_env(fake_anthropic, fake_openai), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert code == 0, stderr
    assert fake_anthropic.pending == 0 and fake_openai.pending == 0
    report = json.loads((out / "report.json").read_text())
    intake_scores = report["suites"][0]["routes"][0]["scores"]
    assert {k: intake_scores[k] for k in (
        "cases", "decision_accuracy", "ask_f1", "over_asking", "workload_accuracy",
        "deliverable_match", "criteria_recall",
    )} == {
        "cases": len(intake.cases), "decision_accuracy": 1.0, "ask_f1": 1.0, "over_asking": 0.0,
        "workload_accuracy": 1.0, "deliverable_match": 1.0, "criteria_recall": 1.0,
    }  # fmt: skip
    verify_scores_ = report["suites"][1]["routes"][0]["scores"]
    assert {k: verify_scores_[k] for k in ("accuracy", "false_accept", "false_reject", "kappa")} == {
        "accuracy": 1.0, "false_accept": 0.0, "false_reject": 0.0, "kappa": 1.0,
    }  # fmt: skip
    assert verify_scores_["units"] == sum(len(c.criteria) for c in verify.cases)  # type: ignore[union-attr]


async def test_a_case_the_provider_refuses_is_reported_and_retried_by_the_next_run(
    tmp_path: Path, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    _, verify = _suites(tmp_path)

    def verdicts(body: dict[str, Any]) -> AnthropicReply:
        return AnthropicReply.tool("record_verdicts", _verdicts("anthropic", body), usage=USAGE)

    fake_anthropic.script(AnthropicReply.error(400, "prompt is too long"), verdicts, verdicts)
    out = tmp_path / "run"
    args = (
        "eval", "--suite", str(verify), "--route", "verify=anthropic:claude-haiku-4-5", "--yes",
        "--concurrency", "1", "--out", str(out),
    )  # fmt: skip
    code, _, stderr = await delegate(*args, env=_env(fake_anthropic, fake_openai), cwd=tmp_path)
    assert code == 1
    assert "1 cases failed at the provider (see report.md)" in stderr
    [route] = json.loads((out / "report.json").read_text())["suites"][0]["routes"]
    assert [e["case"] for e in route["errors"]] == ["v1"] and route["done"] == 2
    assert "prompt is too long" in route["errors"][0]["error"]
    assert "v1: " in (out / "report.md").read_text()

    fake_anthropic.script(verdicts)
    code, _, stderr = await delegate(*args, env=_env(fake_anthropic, fake_openai), cwd=tmp_path)
    assert code == 0, stderr
    assert len(fake_anthropic.requests) == 4 and "Case v1" in _messages(fake_anthropic.requests[-1])
    [route] = json.loads((out / "report.json").read_text())["suites"][0]["routes"]
    assert route["errors"] == [] and route["done"] == 3
