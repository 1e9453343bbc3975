"""Posts a weekly digest in Slack: Block Kit message, then its chart via the v2 file upload."""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.digest_blocks import digest_blocks, digest_text
from workers.digest import Digest

log = logging.getLogger(__name__)


class SlackDigestPublisher:
    """A `workers.digest.DigestPublisher` on the bot's Web API client."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def publish(self, channel: str, digest: Digest, chart_png: bytes | None) -> str | None:
        response = await self.client.chat_postMessage(
            channel=channel, text=digest_text(digest), blocks=digest_blocks(digest)
        )
        ts = response.get("ts")
        if chart_png:
            # The message is out; a chart that fails to upload is logged, not posted again.
            try:
                await self.client.files_upload_v2(
                    channel=channel,
                    content=chart_png,
                    filename=f"digest-{digest.team}-{digest.week.label}.png",
                    title=f"Finished outcomes and cost per outcome, last {len(digest.series)} weeks",
                )
            except SlackApiError as exc:
                log.warning("digest chart upload failed: %s", exc.response.get("error"))
        return str(ts) if ts else None
