"""The work-order state machine: every legal transition works, illegal ones are refused."""

from __future__ import annotations

import itertools

import pytest

from workers.errors import IllegalTransition
from workers.states import ACTIVE, TERMINAL, TRANSITIONS, can_transition, check_transition
from workers.workorder import Status

LEGAL = [(src, dst) for src, targets in TRANSITIONS.items() for dst in sorted(targets)]
ILLEGAL = [
    (src, dst) for src, dst in itertools.product(Status, Status) if dst not in TRANSITIONS[src]
]


def test_every_status_has_a_row_in_the_table() -> None:
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize(("source", "target"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_legal_transition_is_recorded_with_actor_and_reason(source: Status, target: Status) -> None:
    t = check_transition("WO-1", source, target, actor="U1", reason="because")
    assert (t.source, t.target, t.actor, t.reason) == (source, target, "U1", "because")
    assert t.at.tzinfo is not None


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (Status.DRAFTING, Status.RUNNING),
        (Status.QUEUED, Status.APPROVED),
        (Status.APPROVED, Status.QUEUED),
        (Status.CANCELLED, Status.QUEUED),
        (Status.REJECTED, Status.AWAITING_REVIEW),
        (Status.RUNNING, Status.APPROVED),
        (Status.AWAITING_REVIEW, Status.RUNNING),
        (Status.WAITING_FOR_REQUESTER, Status.VERIFYING),
    ],
)
def test_illegal_transition_raises_domain_error(source: Status, target: Status) -> None:
    with pytest.raises(IllegalTransition) as excinfo:
        check_transition("WO-7", source, target, actor="U1", reason="x")
    assert "WO-7" in str(excinfo.value)
    assert source.value in str(excinfo.value) and target.value in str(excinfo.value)


def test_all_other_pairs_are_illegal() -> None:
    assert ILLEGAL, "the table should not allow everything"
    assert not any(can_transition(src, dst) for src, dst in ILLEGAL)


def test_terminal_states_lead_nowhere_and_every_state_can_be_cancelled_unless_finished() -> None:
    assert TERMINAL == {Status.APPROVED, Status.REJECTED, Status.CANCELLED}
    for status in set(Status) - TERMINAL:
        assert can_transition(status, Status.CANCELLED), status
    assert ACTIVE.isdisjoint(TERMINAL)


def test_every_state_is_reachable_from_drafting() -> None:
    seen, frontier = {Status.DRAFTING}, [Status.DRAFTING]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(Status)


def test_transition_requires_an_actor() -> None:
    with pytest.raises(ValueError, match="actor"):
        check_transition("WO-1", Status.DRAFTING, Status.CANCELLED, actor="", reason="x")
