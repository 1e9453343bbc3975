"""Where an MCP tool comes from and what its server says about it: the facts the authority
policy decides on. A leaf module, so the policy can read it without importing the client."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class McpOrigin:
    """An MCP tool's server, its name there, and the server's annotations.

    Annotations are hints from the server, not facts: a hint counts only when the server sets it
    (`None` means it said nothing), and `read_only` is believed only on a trusted server.
    """

    server: str
    tool: str
    trusted: bool = False
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None

    @property
    def grant_name(self) -> str:
        """The name a policy grants it by: `server.tool`."""
        return f"{self.server}.{self.tool}"

    @property
    def wildcard(self) -> str:
        """`server.*`: every tool of the server."""
        return f"{self.server}.*"

    @property
    def believed_read_only(self) -> bool:
        return self.trusted and self.read_only is True

    def hints(self) -> dict[str, bool]:
        """The annotations the server set, under MCP's names."""
        named = {
            "readOnlyHint": self.read_only,
            "destructiveHint": self.destructive,
            "idempotentHint": self.idempotent,
            "openWorldHint": self.open_world,
        }
        return {k: v for k, v in named.items() if v is not None}
