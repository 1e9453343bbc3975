"""Modals: the intake form (shortcut, App Home) and the work-order editor, with inline validation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.blocks import context, modal_title, plain, truncate
from bot.ids import CHANGES_CALLBACK, EDIT_CALLBACK, EXTEND_CALLBACK, INTAKE_CALLBACK
from bot.mrkdwn import mention
from workers.config import Settings
from workers.permissions import may_assign, may_exceed_class, raised_above_class
from workers.workorder import WorkloadClass, WorkOrder

MAX_CRITERIA = 6
PRIVATE_METADATA_MAX = 3000


def _input(
    block_id: str, label: str, element: dict[str, Any], *, optional: bool = False, hint: str = ""
) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "input",
        "block_id": block_id,
        "label": plain(label, 2000),
        "element": {**element, "action_id": block_id},
        "optional": optional,
    }
    if hint:
        block["hint"] = plain(hint, 2000)
    return block


def _text(initial: str, *, multiline: bool = False, max_length: int = 3000) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "multiline": multiline,
        "max_length": max_length,
    }
    if initial:
        element["initial_value"] = truncate(initial, max_length, "…")
    return element


def _number(
    initial: str, *, minimum: str, decimal: bool = False, maximum: str | None = None
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "number_input",
        "is_decimal_allowed": decimal,
        "min_value": minimum,
        "initial_value": initial,
    }
    if maximum is not None:
        element["max_value"] = maximum
    return element


def _modal(callback_id: str, title: str, submit: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """A modal's frame: its callback id, title, buttons and state carried to the submission."""
    return {
        "type": "modal",
        "callback_id": callback_id,
        "title": modal_title(title),
        "submit": plain(submit, 24),
        "close": plain("Cancel", 24),
        "private_metadata": private_metadata(metadata),
    }


def _option(value: str, label: str) -> dict[str, Any]:
    return {"text": plain(label, 75), "value": value}


def private_metadata(metadata: dict[str, Any], limit: int = PRIVATE_METADATA_MAX) -> str:
    """`metadata` as JSON within Slack's limit on `private_metadata`.

    Cutting the JSON itself leaves it unparseable (non-ASCII text made it six times longer when
    escaped), so the longest text value is shortened instead until the whole fits.
    """
    data = dict(metadata)
    encoded = json.dumps(data, ensure_ascii=False)
    while len(encoded) > limit:
        texts = [k for k, v in data.items() if isinstance(v, str) and v]
        if not texts:
            raise ValueError(f"private_metadata cannot fit in {limit} characters: {encoded[:80]}")
        key = max(texts, key=lambda k: len(data[k]))
        value = data[key]
        # Escapes make a character cost up to six in the JSON: cut in proportion.
        excess = (len(encoded) - limit) * len(value) // len(json.dumps(value, ensure_ascii=False))
        data[key] = truncate(value, max(0, len(value) - max(1, excess)), "…")
        if data[key] == value:  # too short to be shortened with a marker
            data[key] = ""
        encoded = json.dumps(data, ensure_ascii=False)
    return encoded


# Intake form


def intake_modal(*, initial_text: str = "", metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        **_modal(INTAKE_CALLBACK, "Delegate this", "Continue", metadata),
        "blocks": [
            _input(
                "request",
                "What should be done?",
                _text(initial_text, multiline=True),
                hint="I'll ask a question or two if needed, then draft a work order for you to start.",
            )
        ],
    }


def intake_request(values: dict[str, Any]) -> str:
    return str(_value(values, "request") or "").strip()


# Work-order editor


def edit_modal(
    order: WorkOrder, settings: Settings, *, metadata: dict[str, Any], user: str = ""
) -> dict[str, Any]:
    """The editor for `user`: reviewers and escalation contact are inputs for admins only; the
    requester sees them, and the channel's reviewers stay whatever is submitted."""
    policies = settings.channel_defaults(order.channel).grantable_policies()
    if order.authority_policy not in policies:
        policies = [order.authority_policy, *policies]
    reviewers: dict[str, Any] = {
        "type": "multi_users_select",
        "placeholder": plain("Choose reviewers"),
    }
    if order.verification.reviewers:
        reviewers["initial_users"] = order.verification.reviewers
    escalation: dict[str, Any] = {"type": "users_select", "placeholder": plain("Choose a person")}
    if order.escalation_contact:
        escalation["initial_user"] = order.escalation_contact
    tz = _zone(str(metadata.get("tz", "UTC")))
    deadline_date: dict[str, Any] = {"type": "datepicker"}
    deadline_time: dict[str, Any] = {"type": "timepicker"}
    if order.deadline:
        local = order.deadline.astimezone(tz)
        deadline_date["initial_date"] = local.date().isoformat()
        deadline_time["initial_time"] = local.strftime("%H:%M")
    budget = order.budget
    return {
        **_modal(EDIT_CALLBACK, f"Edit {order.id or 'draft'}", "Save", metadata),
        "blocks": [
            _input("title", "Title", _text(order.title, max_length=200)),
            _input("goal", "Goal", _text(order.goal, multiline=True)),
            _input("deliverable", "Deliverable", _text(order.deliverable, multiline=True)),
            _input(
                "criteria",
                "Acceptance criteria",
                _text("\n".join(order.acceptance_criteria), multiline=True),
                hint=f"One per line, 1 to {MAX_CRITERIA}, each checkable by reading the result.",
            ),
            _input(
                "workload",
                "Workload",
                {
                    "type": "static_select",
                    "options": [_option(w.value, w.value) for w in WorkloadClass],
                    "initial_option": _option(
                        order.workload_class.value, order.workload_class.value
                    ),
                },
            ),
            _input(
                "budget_usd",
                "Budget (USD)",
                _number(
                    f"{budget.max_usd:.2f}",
                    minimum="0.01",
                    decimal=True,
                    maximum=f"{settings.max_order_usd:g}",
                ),
            ),
            _input(
                "wall_clock_min",
                "Time limit (minutes)",
                _number(str(max(1, round(budget.max_wall_clock_s / 60))), minimum="1"),
            ),
            _input("tool_calls", "Tool calls", _number(str(budget.max_tool_calls), minimum="0")),
            _input(
                "policy",
                "Authority policy",
                {
                    "type": "static_select",
                    "options": [_policy_option(p, settings) for p in policies],
                    "initial_option": _policy_option(order.authority_policy, settings),
                },
            ),
            *(
                [
                    _input("reviewers", "Reviewers", reviewers, optional=True),
                    _input("escalation", "Escalation contact", escalation, optional=True),
                ]
                if may_assign(user, settings)
                else [_people_line(order)]
            ),
            _input("deadline_date", "Deadline (date)", deadline_date, optional=True),
            _input(
                "deadline_time",
                "Deadline (time)",
                deadline_time,
                optional=True,
                hint="In your time zone. Without a time, the end of the day.",
            ),
        ],
    }


def _people_line(order: WorkOrder) -> dict[str, Any]:
    reviewers = ", ".join(mention(r) for r in order.verification.reviewers) or "you"
    contact = mention(order.escalation_contact) if order.escalation_contact else "nobody"
    return context(
        f"Reviewers: {reviewers} · Escalation contact: {contact}. Only an admin can change these."
    )


def _policy_option(name: str, settings: Settings) -> dict[str, Any]:
    policy = settings.policies.get(name)
    label = f"{name}: {', '.join(policy.tools)}" if policy else name
    return _option(name, label)


@dataclass(frozen=True)
class EditResult:
    changes: dict[str, Any]
    errors: dict[str, str]


def parse_edit(
    values: dict[str, Any],
    order: WorkOrder,
    settings: Settings,
    *,
    tz: str,
    now: datetime,
    user: str = "",
) -> EditResult:
    """Turn a submitted editor into order changes, or into errors keyed by the field's block id.

    Reviewers and the escalation contact change only when `user` is an admin (whatever else is
    submitted); a budget above the workload class's envelope needs an admin or the escalation
    contact."""
    errors: dict[str, str] = {}
    changes: dict[str, Any] = {}

    for block in ("title", "goal", "deliverable"):
        text = str(_value(values, block) or "").strip()
        if not text:
            errors[block] = "This cannot be empty."
        else:
            changes[block] = text

    criteria = [
        line.strip(" \t-•☐*") for line in str(_value(values, "criteria") or "").splitlines()
    ]
    criteria = [c for c in criteria if c]
    if not 1 <= len(criteria) <= MAX_CRITERIA:
        errors["criteria"] = (
            f"Write 1 to {MAX_CRITERIA} criteria, one per line (you wrote {len(criteria)})."
        )
    else:
        changes["acceptance_criteria"] = criteria

    workload = _value(values, "workload") or order.workload_class.value
    try:
        workload_class = WorkloadClass(workload)
    except ValueError:
        errors["workload"] = "Choose one of the workload classes."
        workload_class = order.workload_class
    # The class sets the envelope a budget is judged by: changing it is the same decision as
    # raising a budget above one.
    if workload_class is not order.workload_class and not may_exceed_class(order, user, settings):
        errors["workload"] = (
            f"Changing the workload class (now {order.workload_class.value}) needs an admin or "
            "the escalation contact."
        )
    changes["workload_class"] = workload_class.value

    usd = _decimal(_value(values, "budget_usd"))
    if usd is None or usd <= 0:
        errors["budget_usd"] = "Enter a budget in US dollars greater than 0, e.g. 2.50."
    elif usd > Decimal(str(settings.max_order_usd)):
        errors["budget_usd"] = _over_limit(settings.max_order_usd)
    minutes = _int(_value(values, "wall_clock_min"))
    if minutes is None or minutes < 1:
        errors["wall_clock_min"] = "Enter a whole number of minutes, at least 1."
    elif minutes > 24 * 60:
        errors["wall_clock_min"] = "At most 1440 minutes (one day)."
    tool_calls = _int(_value(values, "tool_calls"))
    if tool_calls is None or tool_calls < 0:
        errors["tool_calls"] = "Enter a whole number of tool calls, 0 or more."
    if not {"budget_usd", "wall_clock_min", "tool_calls"} & errors.keys():
        assert usd is not None and minutes is not None and tool_calls is not None
        budget = order.budget.model_copy(
            update={
                "max_usd": float(usd),
                "max_wall_clock_s": minutes * 60,
                "max_tool_calls": tool_calls,
            }
        )
        raised = raised_above_class(order, budget, settings, workload_class=workload_class)
        if raised and not may_exceed_class(order, user, settings):
            envelope = settings.budgets[workload_class]
            errors["budget_usd"] = (
                f"Above the {workload_class.value} class ({envelope.describe()}): "
                f"raising the {', '.join(raised)} needs an admin or the escalation contact."
            )
        else:
            changes["budget"] = budget

    policy = _value(values, "policy") or order.authority_policy
    allowed = settings.channel_defaults(order.channel).grantable_policies()
    if policy not in allowed and policy != order.authority_policy:
        errors["policy"] = f"This channel can grant only: {', '.join(allowed)}."
    else:
        changes["authority_policy"] = policy

    if may_assign(user, settings):
        reviewers = _value(values, "reviewers") or []
        changes["verification"] = order.verification.model_copy(
            update={"reviewers": list(reviewers)}
        )
        changes["escalation_contact"] = _value(values, "escalation") or None

    day = _value(values, "deadline_date")
    at = _value(values, "deadline_time")
    if day:
        try:
            local_day = date.fromisoformat(str(day))
            local_time = time.fromisoformat(str(at)) if at else time(23, 59)
        except ValueError:
            errors["deadline_date"] = "That is not a date."
        else:
            deadline = datetime.combine(local_day, local_time, tzinfo=_zone(tz)).astimezone(UTC)
            if deadline <= now:
                errors["deadline_date"] = "The deadline is in the past."
            else:
                changes["deadline"] = deadline
    elif at:
        errors["deadline_date"] = "Pick a date for the deadline too."
    else:
        changes["deadline"] = None
    return EditResult(changes, errors)


# Reviewer's "Request changes" and the exception's "Extend…"


def changes_modal(
    order: WorkOrder, *, value: str | None = None, from_home: bool = False
) -> dict[str, Any]:
    """Feedback for a rework; `value` is the clicked button's (the deliverable shown)."""
    metadata: dict[str, Any] = {"order_id": order.id}
    if value is not None:
        metadata["value"] = value
    if from_home:
        metadata["from_home"] = True
    return {
        **_modal(CHANGES_CALLBACK, f"Changes to {order.id}", "Send back", metadata),
        "blocks": [
            _input(
                "feedback",
                "What should change?",
                {"type": "plain_text_input", "multiline": True, "max_length": 3000},
            )
        ],
    }


def extend_modal(order: WorkOrder, metadata: dict[str, Any], *, factor: float) -> dict[str, Any]:
    """Choose the new ceilings; both start at the current ones times `review.extend_factor`."""
    budget = order.budget
    return {
        **_modal(EXTEND_CALLBACK, f"Extend {order.id}", "Extend and resume", metadata),
        "blocks": [
            _input(
                "usd",
                f"New budget in USD (now ${budget.max_usd:.2f})",
                _number(f"{budget.max_usd * factor:.2f}", minimum="0.01", decimal=True),
            ),
            _input(
                "minutes",
                f"Time limit in minutes (now {budget.max_wall_clock_s // 60})",
                _number(str(max(1, round(budget.max_wall_clock_s * factor / 60))), minimum="1"),
            ),
        ],
    }


def parse_extend(
    values: dict[str, Any], order: WorkOrder, *, max_usd: float
) -> tuple[float | None, int | None, dict[str, str]]:
    errors: dict[str, str] = {}
    usd = _decimal(_value(values, "usd"))
    minutes = _int(_value(values, "minutes"))
    if usd is None:
        errors["usd"] = "Enter an amount in US dollars, e.g. 5.00."
    elif not usd > Decimal(str(order.budget.max_usd)):
        errors["usd"] = f"An extension must be more than the current ${order.budget.max_usd:.2f}."
    elif usd > Decimal(str(max_usd)):
        errors["usd"] = _over_limit(max_usd)
    if minutes is None:
        errors["minutes"] = "Enter a whole number of minutes."
    elif minutes * 60 < order.budget.max_wall_clock_s:
        errors["minutes"] = "The time limit cannot go down."
    return (float(usd) if usd is not None else None), minutes, errors


def _over_limit(max_usd: float) -> str:
    return f"At most ${max_usd:,.2f} per order; ask an admin for more."


def _value(values: dict[str, Any], block_id: str) -> Any:
    """The submitted value of the input in `block_id`, whatever element type it is."""
    element = values.get(block_id, {}).get(block_id, {})
    kind = element.get("type")
    if kind == "static_select":
        option = element.get("selected_option") or {}
        return option.get("value")
    if kind == "multi_users_select":
        return element.get("selected_users")
    if kind == "users_select":
        return element.get("selected_user")
    if kind == "datepicker":
        return element.get("selected_date")
    if kind == "timepicker":
        return element.get("selected_time")
    return element.get("value")


def _decimal(raw: Any) -> Decimal | None:
    try:
        value = Decimal(str(raw).strip())
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def _int(raw: Any) -> int | None:
    value = _decimal(raw)
    if value is None or value != value.to_integral_value():
        return None
    return int(value)


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")
