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
        names = await self.names(
            [p.user for p in (*digest.current.top_requesters, *digest.current.top_reviewers)]
        )
        response = await self.client.chat_postMessage(
            channel=channel, text=digest_text(digest), blocks=digest_blocks(digest, names)
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

    async def names(self, users: list[str]) -> dict[str, str]:
        """Each user's display name (else their full name) from users.info, so the digest can
        name people without a mention that notifies them. A user Slack will not describe is
        left out and shown by id."""
        names: dict[str, str] = {}
        for user in dict.fromkeys(users):
            try:
                response = await self.client.users_info(user=user)
            except SlackApiError as exc:
                log.info("users.info failed for %s: %s", user, exc.response.get("error"))
                continue
            found = response.get("user") or {}
            profile = found.get("profile") or {}
            name = profile.get("display_name") or profile.get("real_name") or found.get("name")
            if name:
                names[user] = str(name)
        return names
