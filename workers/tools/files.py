"""Files: those a run hands in with its deliverable, and those a requester attached that it reads.

Handed-in files are checked here, before anything is stored: an allowed type (CSV, Markdown,
PNG, PDF, the binary ones by their magic bytes, not their names), a safe name, and the size caps
of `tools.files`. Reading a requester's attachment goes through a `FileSource`, an interface the
Slack front door implements (the engine never talks to Slack itself), and only reaches files
attached to messages the requester wrote in the order's own thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Protocol

from workers.config import FileSettings
from workers.providers.base import ToolSpec
from workers.tools.base import Authority, ToolContext, ToolInputError, ToolResult, object_schema

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PDF_MAGIC = b"%PDF-"


@dataclass(frozen=True)
class FileType:
    label: str
    mimetype: str
    extensions: tuple[str, ...]
    binary: bool
    magic: bytes = b""


FILE_TYPES: tuple[FileType, ...] = (
    FileType("CSV", "text/csv", (".csv",), binary=False),
    FileType("Markdown", "text/markdown", (".md", ".markdown"), binary=False),
    FileType("PNG", "image/png", (".png",), binary=True, magic=PNG_MAGIC),
    FileType("PDF", "application/pdf", (".pdf",), binary=True, magic=PDF_MAGIC),
)
ALLOWED = ", ".join(f"{t.label} ({'/'.join(t.extensions)})" for t in FILE_TYPES)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()-]{0,99}$")


@dataclass(frozen=True)
class HandedInFile:
    """A file that passed the checks, ready to be stored with its deliverable."""

    name: str
    mimetype: str
    content: bytes

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


FILES_SCHEMA: dict[str, Any] = {
    "type": "array",
    "description": (
        f"Optional files handed in with the deliverable: {ALLOWED}. Give text files as "
        "`content`, binary ones (PNG, PDF) as `content_base64`."
    ),
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "File name with its extension."},
            "content": {"type": "string", "description": "The text of a CSV or Markdown file."},
            "content_base64": {"type": "string", "description": "A PNG or PDF, base64."},
            "mimetype": {"type": "string"},
        },
        "required": ["name"],
        "additionalProperties": False,
    },
}


def handed_in_files(value: object, limits: FileSettings) -> list[HandedInFile]:
    """The `files` argument of submit_deliverable, checked; ToolInputError says what is wrong."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ToolInputError("'files' must be a list of {name, content or content_base64}")
    if len(value) > limits.max_files:
        raise ToolInputError(f"at most {limits.max_files} files can be handed in at once")
    files: list[HandedInFile] = []
    for index, entry in enumerate(value, 1):
        files.append(_one_file(entry, index, limits))
    names = [f.name.lower() for f in files]
    if len(set(names)) != len(names):
        raise ToolInputError("each file needs its own name")
    total = sum(f.size for f in files)
    if total > limits.max_total_bytes:
        raise ToolInputError(
            f"the files come to {total:,} bytes together; the limit is "
            f"{limits.max_total_bytes:,} bytes"
        )
    return files


def _one_file(entry: object, index: int, limits: FileSettings) -> HandedInFile:
    if not isinstance(entry, dict):
        raise ToolInputError(f"file {index} must be an object with a name and content")
    name = entry.get("name")
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise ToolInputError(
            f"file {index}: the name must be 1-100 letters, digits, spaces, '.', '_', '-' or "
            "brackets, with an extension"
        )
    kind = next((t for t in FILE_TYPES if name.lower().endswith(t.extensions)), None)
    if kind is None:
        raise ToolInputError(f"{name}: this type of file cannot be handed in; allowed: {ALLOWED}")
    claimed = entry.get("mimetype")
    if claimed is not None and claimed != kind.mimetype:
        raise ToolInputError(f"{name}: a {kind.label} file is {kind.mimetype}, not {claimed!r}")
    text, encoded = entry.get("content"), entry.get("content_base64")
    if (text is None) == (encoded is None):
        raise ToolInputError(f"{name}: give exactly one of 'content' and 'content_base64'")
    if text is not None:
        if not isinstance(text, str):
            raise ToolInputError(f"{name}: 'content' must be a string")
        if kind.binary:
            raise ToolInputError(f"{name}: a {kind.label} file must be given as 'content_base64'")
        content = text.encode()
    else:
        if not isinstance(encoded, str):
            raise ToolInputError(f"{name}: 'content_base64' must be a string")
        if len(encoded) > limits.max_file_bytes * 4 // 3 + 8:
            raise ToolInputError(_too_big(name, len(encoded) * 3 // 4, limits))
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ToolInputError(f"{name}: 'content_base64' is not valid base64") from None
    if len(content) > limits.max_file_bytes:
        raise ToolInputError(_too_big(name, len(content), limits))
    if not content:
        raise ToolInputError(f"{name}: the file is empty")
    if kind.binary and not content.startswith(kind.magic):
        raise ToolInputError(f"{name}: the content is not a {kind.label} file")
    if not kind.binary:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolInputError(f"{name}: a {kind.label} file must be UTF-8 text") from None
    return HandedInFile(name=name, mimetype=kind.mimetype, content=content)


def _too_big(name: str, size: int, limits: FileSettings) -> str:
    return f"{name}: {size:,} bytes is over the limit of {limits.max_file_bytes:,} bytes per file"


def delivered_name(order_id: str, deliverable_id: int, position: int, name: str) -> str:
    """The name a handed-in file is uploaded under: unique per (deliverable, file) and the same
    on every try, so an upload whose outcome is unknown can be found again by its name."""
    return f"{order_id}-d{deliverable_id}-{position}-{name}"


# Reading what a requester attached


@dataclass(frozen=True)
class AttachedFile:
    """A file as its source describes it; `content` is None when it was not downloaded."""

    id: str
    name: str
    mimetype: str
    size: int
    content: bytes | None = None


class FileSource(Protocol):
    """Where attached files are read from (the Slack front door implements it: `files.info`,
    then the file's private URL with the bot token)."""

    async def fetch(self, file_id: str, *, max_bytes: int) -> AttachedFile:
        """The file's description, and its bytes if it is at most `max_bytes` long."""
        ...


_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/csv")


def is_text(mimetype: str) -> bool:
    return mimetype.startswith(_TEXT_TYPES) or mimetype.endswith(("+json", "+xml"))


class ReadFile:
    spec = ToolSpec(
        name="read_file",
        description=(
            "Read a file the requester attached to their messages in this order's thread. "
            "Without `file_id`, lists those files; with one, returns the file's text (text "
            "files only; other files are described, not read)."
        ),
        input_schema=object_schema(
            {"file_id": {"type": "string", "description": "An id from the list, e.g. F0123."}},
            [],
        ),
    )
    authority = Authority(summary="reads files the requester attached in the order's thread")

    def __init__(self, limits: FileSettings, source: FileSource | None = None) -> None:
        self.limits = limits
        self.source = source

    def describe(self, arguments: dict[str, Any]) -> str:
        return "Reading an attached file" if arguments.get("file_id") else "Listing attached files"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        attached = await self._attached(ctx)
        file_id = arguments.get("file_id")
        if file_id is None:
            if not attached:
                return ToolResult("The requester attached no files in this thread.")
            lines = [
                f"- {f['id']}: {f.get('name', '')} ({f.get('mimetype', '?')}, "
                f"{int(f.get('size') or 0):,} bytes)"
                for f in attached.values()
            ]
            return ToolResult("Files the requester attached:\n" + "\n".join(lines))
        if not isinstance(file_id, str) or file_id not in attached:
            known = ", ".join(attached) or "none"
            raise ToolInputError(
                f"{file_id!r} is not a file the requester attached in this thread (attached: "
                f"{known})"
            )
        if self.source is None:
            return ToolResult(
                "Attached files cannot be read here: this worker has no Slack connection.",
                is_error=True,
            )
        found = await self.source.fetch(file_id, max_bytes=self.limits.read_max_bytes)
        about = f"{found.name} ({found.mimetype}, {found.size:,} bytes)"
        if not is_text(found.mimetype):
            return ToolResult(f"{about} is not a text file, so it cannot be read as text.")
        if found.content is None:
            return ToolResult(
                f"{about} is larger than the {self.limits.read_max_bytes:,} bytes read_file reads.",
            )
        text = found.content.decode("utf-8", errors="replace")
        if len(text) > self.limits.read_max_chars:
            text = text[: self.limits.read_max_chars] + (
                f"\n(cut at {self.limits.read_max_chars:,} characters)"
            )
        return ToolResult(text, untrusted_source=f"the file {found.name} attached by the requester")

    async def _attached(self, ctx: ToolContext) -> dict[str, dict[str, Any]]:
        """Files on the requester's own messages in the order's thread, by id."""
        order = ctx.order
        if not order.channel or not order.thread_ts:
            return {}
        files: dict[str, dict[str, Any]] = {}
        for message in await ctx.store.slack.thread_messages(order.channel, order.thread_ts):
            if message.user != order.requester:
                continue
            for entry in message.files or []:
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    files[entry["id"]] = entry
        return files
