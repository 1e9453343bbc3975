"""The import rules of docs/ARCHITECTURE.md, checked on the code: `bot` may use `workers`, never
the reverse, and inside `workers` a layer only uses the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The layers of `workers`, lowest first (keep in step with docs/ARCHITECTURE.md).
LAYERS: dict[str, list[str]] = {
    "domain": [
        "workorder", "errors", "states", "keys", "audit", "audit_checkpoint", "untrusted", "logs",
        "models",
        "config", "secret_files", "db", "permissions", "budget", "progress", "providers.base",
    ],
    "storage": ["migrate", "store"],
    "engine": [
        "providers", "tools", "intake", "intake_replies", "dialogue", "verify", "queue", "agent",
        "runtime",
        "review", "followup", "digest", "chart", "telemetry", "delivery", "transcript",
        "evals",
    ],
}  # fmt: skip
RANK = {module: rank for rank, names in enumerate(LAYERS.values()) for module in names}


def _unit(module: str) -> str:
    """The LAYERS entry a module belongs to: `workers.providers.base` -> `providers.base`,
    `workers.store.queue` -> `store`."""
    parts = module.split(".")[1:]
    for size in range(len(parts), 0, -1):
        name = ".".join(parts[:size])
        if name in RANK:
            return name
    return parts[0] if parts else module


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module in ("workers", "bot"):
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (REPO / package).rglob("*.py") if "migrations" not in p.parts)


def test_the_engine_never_imports_the_front_door() -> None:
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _modules("workers")
        for name in _imports(path)
        if name == "bot" or name.startswith("bot.")
    ]
    assert offenders == []


def test_every_engine_module_has_a_layer() -> None:
    tops = {
        path.relative_to(REPO / "workers").parts[0].removesuffix(".py")
        for path in _modules("workers")
    } - {"__init__"}
    assert sorted(tops - RANK.keys()) == [], "add new modules to LAYERS and ARCHITECTURE.md"


def test_layers_only_use_the_layers_below() -> None:
    offenders = []
    for path in _modules("workers"):
        relative = path.relative_to(REPO / "workers").with_suffix("")
        if relative.name == "__init__":
            relative = relative.parent
        if not relative.parts:
            continue
        own = _unit("workers." + ".".join(relative.parts))
        for name in _imports(path):
            if not name.startswith("workers.") or _unit(name) == own:
                continue
            if RANK[_unit(name)] > RANK[own]:
                offenders.append(f"workers/{own} ({own} layer {RANK[own]}) imports {name}")
    assert offenders == []


def test_the_architecture_document_names_every_layer_and_module() -> None:
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    missing = [m for names in LAYERS.values() for m in names if f"`{m}" not in doc]
    assert missing == []


def _engine_reads(path: Path) -> list[str]:
    """`x.store.engine`, `store.engine`: reaching past the store's repositories to its engine."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "engine":
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name == "store":
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_the_front_door_never_reaches_the_database_engine() -> None:
    """SQL stays under workers/store: the front door asks the store's repositories (orders,
    outbox, `store.reporting` for figures and App Home), never runs queries of its own."""
    offenders = [hit for path in _modules("bot") for hit in _engine_reads(path)]
    sql = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _modules("bot")
        for name in _imports(path)
        if name == "sqlmodel" or (name.startswith("sqlalchemy") and name != "sqlalchemy.engine")
    ]
    assert offenders == [] and sql == []
