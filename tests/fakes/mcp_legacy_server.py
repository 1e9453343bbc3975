"""An MCP server written by hand that speaks only protocol version 2024-11-05, as many published
servers still do: no `server/discover`, an `initialize` handshake, tools listed over two pages,
and `notifications/tools/list_changed` when its list changes. `garble` writes a line that is not
JSON-RPC before its answer. Run as `python -m tests.fakes.mcp_legacy_server`."""

from __future__ import annotations

import json
import sys
from typing import Any

VERSION = "2024-11-05"
TOOLS: list[dict[str, Any]] = [
    {
        "name": "lookup",
        "description": "The churn rate of a quarter.",
        "inputSchema": {
            "type": "object",
            "properties": {"quarter": {"type": "string"}},
            "required": ["quarter"],
        },
        "annotations": {"readOnlyHint": True},
    },
    {"name": "grow", "description": "Add a tool.", "inputSchema": {"type": "object"}},
    {
        "name": "garble",
        "description": "Answer after a line of noise.",
        "inputSchema": {"type": "object"},
    },
]


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def answer(request_id: Any, result: dict[str, Any]) -> None:
    send({"jsonrpc": "2.0", "id": request_id, "result": result})


def main() -> None:
    for line in sys.stdin:
        message = json.loads(line)
        method, request_id = message.get("method"), message.get("id")
        params = message.get("params") or {}
        if request_id is None:
            continue  # notifications (initialized, cancelled)
        if method == "initialize":
            answer(
                request_id,
                {
                    "protocolVersion": VERSION,
                    "capabilities": {"tools": {"listChanged": True}},
                    "serverInfo": {"name": "legacy-test", "version": "1"},
                },
            )
        elif method == "tools/list":
            # Two pages: the first tool, then the rest.
            if params.get("cursor") == "page2":
                answer(request_id, {"tools": TOOLS[1:]})
            else:
                answer(request_id, {"tools": TOOLS[:1], "nextCursor": "page2"})
        elif method == "tools/call":
            name = params.get("name")
            if name == "lookup":
                quarter = params.get("arguments", {}).get("quarter")
                text = f"legacy churn in {quarter}: 3.2%"
            elif name == "grow":
                TOOLS.append({"name": f"grown{len(TOOLS)}", "inputSchema": {"type": "object"}})
                send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
                text = "grown"
            elif name == "garble":
                sys.stdout.write("this is not JSON-RPC\n")
                sys.stdout.flush()
                text = "after the noise"
            else:
                send(
                    {
                        "jsonrpc": "2.0",
                        "id": request_id,
                        "error": {"code": -32602, "message": f"unknown tool {name}"},
                    }
                )
                continue
            answer(request_id, {"content": [{"type": "text", "text": text}]})
        else:
            send(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "error": {"code": -32601, "message": f"method not found: {method}"},
                }
            )


if __name__ == "__main__":
    main()
