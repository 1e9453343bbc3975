"""The names MCP tools are offered to the model under.

Providers accept 1-64 of `[A-Za-z0-9_-]`; MCP tool names may be up to 128 characters and hold
dots. A tool is offered as `server__tool` when that fits as is; otherwise (too long, or a
character the providers refuse) as a readable cut of it followed by a hash of the real name, so
the name is the same on every start and across a list change, whatever else the server lists.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME_CHARS = 64
SEPARATOR = "__"
_VALID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_HASH_CHARS = 8


def model_name(server: str, tool: str) -> str:
    """The model-facing name of `tool` on `server` (server names hold no '__', so the first
    '__' always ends the server's part)."""
    plain = f"{server}{SEPARATOR}{tool}"
    if _VALID.match(plain):
        return plain
    return hashed_name(server, tool)


def hashed_name(server: str, tool: str) -> str:
    """`server__<readable cut>_<hash>`: valid for every tool name, and stable."""
    digest = hashlib.sha256(f"{server}.{tool}".encode()).hexdigest()[:_HASH_CHARS]
    room = MAX_NAME_CHARS - len(server) - len(SEPARATOR) - 1 - _HASH_CHARS
    readable = _INVALID_CHARS.sub("_", tool)[: max(room, 0)]
    return f"{server}{SEPARATOR}{readable}_{digest}"


def assign(server: str, tools: list[str], taken: set[str]) -> dict[str, str]:
    """Model-facing names for `tools` (MCP names) on `server`, none of them in `taken`.

    Deterministic: a tool whose plain name is taken (by a built-in, a plug-in or another tool's
    name) gets its hashed name instead; one whose hashed name is taken too is left out.
    """
    names: dict[str, str] = {}
    used = set(taken)
    plain = {tool: model_name(server, tool) for tool in tools}
    counts: dict[str, int] = {}
    for name in plain.values():
        counts[name] = counts.get(name, 0) + 1
    for tool in sorted(tools):
        name = plain[tool]
        if name in used or counts[name] > 1:
            name = hashed_name(server, tool)
        if name in used:
            continue
        used.add(name)
        names[tool] = name
    return names
