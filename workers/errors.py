"""Domain errors. The engine raises these; the front door translates them once, at the edge."""

from __future__ import annotations


class DelegateError(Exception):
    """Something in Delegate went wrong."""


class ConfigError(DelegateError):
    """The configuration is invalid; the message names the field, the value and what is expected."""


class IllegalTransition(DelegateError):
    """A work order was asked to move to a state its current state does not lead to."""

    def __init__(self, order_id: str, current: str, target: str) -> None:
        self.order_id = order_id
        self.current = current
        self.target = target
        super().__init__(f"{order_id}: cannot go from {current!r} to {target!r}")


class NotFound(DelegateError):
    """The requested record does not exist."""


class StaleUpdate(DelegateError):
    """A record changed under us (another process won the race)."""
