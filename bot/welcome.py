"""One welcome in the Messages tab. In Slack's agent messaging experience, opening an app's DM
is `app_home_opened` with `tab: "messages"` (it replaces `assistant_thread_started`); workspaces
on the classic Messages tab send the same event. The first time a person opens it, Delegate
says what it does there, once per person across processes and restarts."""

from __future__ import annotations

import os
import socket

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.blocks import context, sections
from workers.store import Store

WELCOME_KEY = "welcome:{user}"
WELCOME = (
    "Hi! Tell me here what you need done, as you would ask a colleague (for example _pull last "
    "quarter's churn numbers into a one-pager_), or mention me in a channel. I'll ask what I "
    "need to know, show you a work order with its budget before anything runs, and bring the "
    "result back checked, for you or your reviewer to approve."
)


async def welcome(store: Store, client: AsyncWebClient, *, user: str, channel: str) -> bool:
    """Post the welcome in `channel` (the person's DM with the app) unless it was posted, or
    may have been, before; True if it was posted now."""
    key = WELCOME_KEY.format(user=user)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    state, _ = await store.slack.claim_slack_message(
        key=key, purpose="welcome", channel=channel, owner=owner
    )
    if state != "claimed":  # posted, being posted, or an earlier outcome unknown: not twice
        return False
    try:
        response = await client.chat_postMessage(
            channel=channel,
            text=WELCOME,
            blocks=[
                *sections(WELCOME),
                context("Your orders, and those awaiting your review, are on my *Home* tab."),
            ],
        )
    except SlackApiError:
        await store.slack.release_slack_message(key, owner)
        raise
    await store.slack.save_slack_message(
        key=key, purpose="welcome", channel=str(response["channel"]), ts=str(response["ts"])
    )
    return True
