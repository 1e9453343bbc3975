"""A tool result from an MCP server as text for the model: capped, secrets scrubbed, images and
other binary content described in a line rather than passed on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mcp import types

from workers.logs import scrub_secrets

TRUNCATED = "\n[truncated: the result was {total:,} characters; the first {kept:,} are above]"


def result_text(result: types.CallToolResult) -> str:
    """The result's content as one text: text blocks as they are, other content in a line."""
    parts = [_block_text(block) for block in result.content]
    parts = [p for p in parts if p]
    if not any(isinstance(b, types.TextContent) for b in result.content):
        structured = result.structured_content
        if structured is not None:
            parts.append(json.dumps(structured, ensure_ascii=False, indent=2, default=str))
    return "\n\n".join(parts) if parts else "(the tool returned no content)"


def _block_text(block: Any) -> str:
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent):
        return f"[image: {block.mime_type}, {_decoded_size(block.data)} bytes, not shown]"
    if isinstance(block, types.AudioContent):
        return f"[audio: {block.mime_type}, {_decoded_size(block.data)} bytes, not played]"
    if isinstance(block, types.ResourceLink):
        mime = f", {block.mime_type}" if block.mime_type else ""
        return f"[resource link: {block.name} <{block.uri}>{mime}]"
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, types.TextResourceContents):
            return f"[resource <{resource.uri}>]\n{resource.text}"
        mime = f", {resource.mime_type}" if resource.mime_type else ""
        blob = getattr(resource, "blob", "")
        return (
            f"[resource <{resource.uri}>{mime}, {_decoded_size(blob)} bytes of binary, not shown]"
        )
    kind = getattr(block, "type", type(block).__name__)
    return f"[{kind} content, not shown]"


def _decoded_size(data: str) -> int:
    return len(data) * 3 // 4


def cap(text: str, max_chars: int) -> str:
    """`text` within `max_chars`, saying how much was cut."""
    if len(text) <= max_chars:
        return text
    kept = max(0, max_chars - len(TRUNCATED.format(total=len(text), kept=max_chars)))
    return text[:kept] + TRUNCATED.format(total=len(text), kept=kept)


def clean(text: str, *, secrets: Sequence[str], max_chars: int) -> str:
    """Scrubbed first (a secret cut in half by the cap would no longer match), then capped."""
    return cap(scrub_secrets(text, secrets), max_chars)
