"""Which tools exist: the built-ins, plus plug-ins from entry points and the configuration.

A plug-in is named as 'module:attribute' (config `tools.plugins`) or registered by a package
under the entry point group `delegate.tools`. The attribute may be a Tool, a Tool class, a list
of Tools, or a factory taking the Settings and returning one or a list. Every tool declares its
`Authority`; an order's policy must still list it by name before a run may call it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol

from aiohttp.abc import AbstractResolver

from workers.config import AuthorityPolicy, Settings
from workers.errors import ConfigError
from workers.providers.base import ToolSpec
from workers.tools.base import Authority, Tool
from workers.tools.builtin import AskRequester, ReadThread, SubmitDeliverable
from workers.tools.files import FileSource, ReadFile
from workers.tools.policy import decision, granted
from workers.tools.web import WebFetch
from workers.tools.web_search import WebSearch

ENTRY_POINT_GROUP = "delegate.tools"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolSource(Protocol):
    """Tools that come and go while Delegate runs (an MCP server's, as it lists them)."""

    def tools(self) -> Sequence[Tool]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class ToolRegistry:
    """Tools by name: fixed ones, and those of sources (MCP servers) as they list them now."""

    def __init__(self, tools: Iterable[Tool], sources: Iterable[ToolSource] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._sources: list[ToolSource] = list(sources)
        for tool in tools:
            self.add(tool)

    def add_source(self, source: ToolSource) -> None:
        self._sources.append(source)

    async def start(self) -> None:
        """Connect the sources (MCP servers) and learn their tools."""
        for source in self._sources:
            await source.start()

    async def close(self) -> None:
        for source in self._sources:
            await source.close()

    def _all(self) -> dict[str, Tool]:
        tools = dict(self._tools)
        for source in self._sources:
            for tool in source.tools():
                tools.setdefault(tool.spec.name, tool)  # a source never shadows a fixed tool
        return tools

    def add(self, tool: Tool, *, source: str = "") -> None:
        _validate(tool, source or type(tool).__name__)
        name = tool.spec.name
        if name in self._tools:
            raise ConfigError(
                f"tool {name!r} from {source or type(tool).__name__} clashes with a tool of the "
                "same name; rename one of them"
            )
        self._tools[name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name) or self._all().get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._all())

    def offered(self, policy: AuthorityPolicy, *, policy_name: str = "") -> list[Tool]:
        """The tools shown to the model under this policy: granted and not denied
        (enforcement happens per call)."""
        return [
            tool
            for name, tool in sorted(self._all().items())
            if granted(name, policy, tool)
            and (policy.domains or not tool.authority.network)
            and decision(policy_name, policy, tool) != "deny"
        ]


def builtin_tools(
    settings: Settings,
    *,
    resolver: AbstractResolver | None = None,
    also_allowed: frozenset[str] = frozenset(),
    files: FileSource | None = None,
) -> list[Tool]:
    """`files` reads what requesters attach (the Slack front door's; without it, read_file
    says files cannot be read here)."""
    return [
        ReadThread(),
        AskRequester(),
        SubmitDeliverable(),
        WebFetch(settings.tools.web_fetch, resolver=resolver, also_allowed=also_allowed),
        ReadFile(settings.tools.files, files),
        WebSearch(),
    ]


def load_tools(
    settings: Settings,
    *,
    use_entry_points: bool = True,
    extra: Iterable[Tool] = (),
    resolver: AbstractResolver | None = None,
    also_allowed: frozenset[str] = frozenset(),
    files: FileSource | None = None,
) -> ToolRegistry:
    """The built-ins, the entry-point plug-ins, the configured plug-ins and `extra`."""
    registry = ToolRegistry(
        builtin_tools(settings, resolver=resolver, also_allowed=also_allowed, files=files)
    )
    if use_entry_points:
        for point in entry_points(group=ENTRY_POINT_GROUP):
            source = f"entry point {point.name!r} ({point.value})"
            try:
                loaded = point.load()
            except Exception as exc:
                raise ConfigError(f"{source}: cannot be loaded ({exc})") from exc
            for tool in _tools_from(loaded, settings, source):
                registry.add(tool, source=source)
    for path in settings.tools.plugins:
        source = f"tools.plugins entry {path!r}"
        for tool in _tools_from(_import(path, source), settings, source):
            registry.add(tool, source=source)
    for tool in extra:
        registry.add(tool)
    if settings.mcp_servers:
        from workers.tools.mcp import McpServers

        registry.add_source(McpServers(settings, reserved=registry.names))
    return registry


def _import(path: str, source: str) -> Any:
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{source}: expected 'module:attribute', such as 'mytools:search'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{source}: cannot import {module_name!r} ({exc})") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"{source}: module {module_name!r} has no {attribute!r}") from None


def _tools_from(loaded: Any, settings: Settings, source: str) -> list[Tool]:
    if isinstance(loaded, type):
        try:
            loaded = loaded()
        except TypeError:
            loaded = loaded(settings)
    elif not isinstance(loaded, list | tuple) and not _looks_like_tool(loaded) and callable(loaded):
        loaded = loaded(settings)
    items = list(loaded) if isinstance(loaded, list | tuple) else [loaded]
    for item in items:
        if not _looks_like_tool(item):
            raise ConfigError(
                f"{source}: {item!r} is not a tool (it needs `spec`, `authority`, `describe` "
                "and an async `run`)"
            )
    return items


def _looks_like_tool(obj: Any) -> bool:
    return not isinstance(obj, type) and isinstance(obj, Tool)


def _validate(tool: Tool, source: str) -> None:
    if not isinstance(tool.spec, ToolSpec):
        raise ConfigError(f"{source}: `spec` must be a workers.providers.ToolSpec")
    if not _NAME.match(tool.spec.name):
        raise ConfigError(
            f"{source}: tool name {tool.spec.name!r} must be 1-64 letters, digits, '_' or '-'"
        )
    if not isinstance(tool.authority, Authority):
        raise ConfigError(
            f"{source}: tool {tool.spec.name!r} must declare its authority as "
            "workers.tools.Authority"
        )
