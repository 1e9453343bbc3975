"""Reading the files a requester attached, for the engine's read_file tool (a `FileSource`).

`files.info` describes the file (needs the `files:read` scope); its bytes come from the file's
`url_private` with the bot token in the Authorization header. The token only ever goes to Slack's
own hosts (or the API host the client is configured with), never to wherever a URL points.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from workers.tools.base import ToolInputError
from workers.tools.files import AttachedFile, is_text

DOWNLOAD_TIMEOUT_S = 30.0


class SlackFiles:
    """`workers.tools.files.FileSource` over the Slack Web API."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def fetch(self, file_id: str, *, max_bytes: int) -> AttachedFile:
        try:
            response = await self.client.files_info(file=file_id)
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error == "missing_scope":
                raise ToolInputError(
                    "Slack does not let Delegate read files: the app needs the files:read "
                    "scope (an admin adds it and reinstalls the app)"
                ) from exc
            raise ToolInputError(f"Slack could not describe the file ({error})") from exc
        info = response.get("file") or {}
        found = AttachedFile(
            id=file_id,
            name=str(info.get("name") or info.get("title") or file_id),
            mimetype=str(info.get("mimetype") or "application/octet-stream"),
            size=int(info.get("size") or 0),
        )
        url = str(info.get("url_private_download") or info.get("url_private") or "")
        if not is_text(found.mimetype) or found.size > max_bytes or not url:
            return found
        if not self._slack_host(url):
            raise ToolInputError("Slack gave a download address outside Slack; not followed")
        content = await self._download(url, max_bytes)
        if content is None:
            return found
        return AttachedFile(found.id, found.name, found.mimetype, len(content), content)

    def _slack_host(self, url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        own = (urlsplit(self.client.base_url).hostname or "").lower()
        return host == own or host == "slack.com" or host.endswith(".slack.com")

    async def _download(self, url: str, max_bytes: int) -> bytes | None:
        """The file's bytes, or None when it turns out larger than `max_bytes`."""
        headers = {"Authorization": f"Bearer {self.client.token}"}
        timeout = aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_S)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=headers, allow_redirects=False) as response,
        ):
            if response.status != 200 or response.content_type == "text/html":
                # Slack answers a refused token with its sign-in page, not an error status.
                raise ToolInputError(f"Slack did not hand over the file ({response.status})")
            content = await response.content.read(max_bytes + 1)
        return None if len(content) > max_bytes else content
