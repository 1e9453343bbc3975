"""The one place that reads and writes the database. Every state change is audited in the same
transaction as the change itself, so the trail cannot miss a step that happened.

`Store` is composed of one part per concern, over a shared base (workers.store.base): orders and
transitions, runs, queue and leases, spend and quota, Slack bookkeeping and shared rate limits,
audit.
"""

from __future__ import annotations

from workers.store.approvals import ApprovalsStore
from workers.store.audit import AuditStore
from workers.store.base import OrderRef, as_utc, row_to_order
from workers.store.feedback import FeedbackStore, Pressed
from workers.store.orders import EDITABLE_FIELDS, OrdersStore
from workers.store.outbox import OutboxItem, OutboxStore, Undelivered
from workers.store.queue import Admission, Claim, QueueStore
from workers.store.rate_limits import RateLimitsStore
from workers.store.runs import RunsStore
from workers.store.slack import SlackStore

__all__ = [
    "EDITABLE_FIELDS",
    "Admission",
    "Claim",
    "OrderRef",
    "OutboxItem",
    "Pressed",
    "Store",
    "Undelivered",
    "as_utc",
    "row_to_order",
]


class Store(
    OrdersStore,
    RunsStore,
    QueueStore,
    SlackStore,
    OutboxStore,
    AuditStore,
    ApprovalsStore,
    RateLimitsStore,
    FeedbackStore,
):
    """Async data access for work orders, runs, spend, Slack bookkeeping and the audit trail."""
