"""The tool interface: what a tool looks like to the model, what authority it needs, how it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from workers.config import AuthorityPolicy, Settings
from workers.providers.base import ToolSpec
from workers.workorder import WorkOrder

if TYPE_CHECKING:
    from workers.store import Store


@dataclass(frozen=True)
class Authority:
    """What a tool needs beyond being listed in the order's policy.

    `network`: it reaches outside Delegate, so the policy must grant domains; the tool itself
    checks every address it connects to. `side_effects`: it posts or changes something (it must
    be idempotent per tool-use id, since a resumed run may call it again).
    """

    network: bool = False
    side_effects: bool = False
    summary: str = ""


@dataclass
class ToolResult:
    content: str
    is_error: bool = False
    untrusted_source: str | None = None
    """Set when the content came from outside (a web page, other people's messages): the agent
    fences it as data the model must not take instructions from."""
    park: bool = False
    """Stop the run until the requester replies (ask_requester)."""
    finish: bool = False
    """The run is done (submit_deliverable)."""


@dataclass
class ToolContext:
    """What a tool may use while it runs."""

    order: WorkOrder
    policy_name: str
    policy: AuthorityPolicy
    settings: Settings
    store: Store
    tool_use_id: str
    attempt_id: int | None = None
    remaining_s: float | None = None
    """The order's wall-clock budget left when the call started: no tool waits longer."""


class ToolInputError(ValueError):
    """The model's arguments do not fit the tool; the message is shown to the model."""


class ToolForbidden(ToolInputError):
    """The call needs authority the order's policy does not grant (a domain, an address).

    Shown to the model like any tool error, and counted towards the run's forbidden calls."""


@runtime_checkable
class Tool(Protocol):
    """A tool a run may call. Plug-ins implement this and declare their authority."""

    spec: ToolSpec
    authority: Authority

    def describe(self, arguments: dict[str, Any]) -> str:
        """The step in plain words for the status message, e.g. "Reading example.com"."""
        ...

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult: ...


def require_str(arguments: dict[str, Any], name: str, *, max_chars: int | None = None) -> str:
    value = arguments.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ToolInputError(f"'{name}' is required and must be a non-empty string")
    if max_chars is not None and len(value) > max_chars:
        raise ToolInputError(f"'{name}' is longer than {max_chars} characters")
    return value


def object_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
