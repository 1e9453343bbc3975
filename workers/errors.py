"""Domain errors. The engine raises these; the front door translates them once, at the edge."""

from __future__ import annotations


class DelegateError(Exception):
    """Something in Delegate went wrong."""


class ConfigError(DelegateError):
    """The configuration is invalid; the message names the field, the value and what is expected."""


class DatabaseUnavailable(DelegateError):
    """The database could not be reached; the message says where (password hidden) and why."""


class SetupError(DelegateError):
    """Something no retry fixes stops the process (a refused token, a missing key): one line per
    problem, each naming the variable to change and how."""


class IllegalTransition(DelegateError):
    """A work order was asked to move to a state its current state does not lead to."""

    def __init__(self, order_id: str, current: str, target: str) -> None:
        self.order_id = order_id
        self.current = current
        self.target = target
        super().__init__(f"{order_id}: cannot go from {current!r} to {target!r}")


class OrderMoved(DelegateError):
    """A write found the order in a state it does not accept: the order moved on (e.g. it was
    started) between the writer's read and its write, so nothing was changed."""

    def __init__(self, order_id: str, current: str) -> None:
        self.order_id = order_id
        self.current = current
        super().__init__(f"{order_id} is {current}; the change was not made")


class NotFound(DelegateError):
    """The requested record does not exist."""


class StaleUpdate(DelegateError):
    """A record changed under us (another process won the race)."""


class OutdatedDecision(DelegateError):
    """A review decision was made on a deliverable that is no longer the order's latest."""

    def __init__(self, order_id: str, shown: int, current: int | None) -> None:
        self.order_id = order_id
        self.shown = shown
        self.current = current
        super().__init__(f"{order_id}: deliverable {shown} is outdated (latest: {current})")


class NotPermitted(DelegateError):
    """The actor may not do this; the message says who may, meant for the person asking."""


# Engine outcomes. The worker raises these; the front door turns each into one thread message.


class BudgetExceeded(DelegateError):
    """A run reached one of its ceilings; `limit` names which one."""

    LIMITS = ("usd", "tokens", "wall_clock", "tool_calls", "model_calls", "team_quota")

    def __init__(self, limit: str, message: str, *, needed_micro_usd: int | None = None) -> None:
        self.limit = limit
        # What the next call would have had to reserve (known when a quota or budget binds).
        self.needed_micro_usd = needed_micro_usd
        super().__init__(message)


class AuthorityDenied(DelegateError):
    """The run kept asking for something its authority policy does not grant."""

    def __init__(self, tool: str, message: str) -> None:
        self.tool = tool
        super().__init__(message)


class RetryLater(DelegateError):
    """Not now: try again after `after_s` seconds (a provider's long Retry-After, a Slack 429)."""

    def __init__(self, after_s: float, message: str = "") -> None:
        self.after_s = after_s
        super().__init__(message or f"retry in {after_s:g} s")


class Busy(RetryLater):
    """Another live process holds the claim on this post: look again after `after_s`, without
    backing off further (its post ends soon, or its claim runs out when it dies)."""


class ProviderUnavailable(DelegateError):
    """Every configured model for this call failed (overloaded, server errors, timeouts)."""


class ProviderRejected(DelegateError):
    """The provider refused the request for a reason retrying will not fix (key, billing, input).

    The message is a plain explanation meant for the thread."""


class LeaseLost(DelegateError):
    """Another worker owns this run now, or the order left the running state (e.g. cancelled)."""
