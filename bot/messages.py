"""User-facing text that appears in more than one place."""

from __future__ import annotations

from bot.mrkdwn import escape

HELP = (
    "*Delegate* turns a request into a work order that runs in the background, on a budget, "
    "and comes back verified.\n"
    "• Mention me with what you need: `@Delegate summarise last week's support tickets`\n"
    "• Or DM me, or use `/delegate <request>`\n"
    "• `/delegate list`: your open orders\n"
    "• `/delegate status WO-42` · `/delegate cancel WO-42`\n"
    "• On any message: ⋯ → *Delegate this*"
)


def unknown_command(word: str) -> str:
    """The answer to `/delegate <one word that is no command>`, shown only to whoever typed it."""
    shown = escape(word[:40]).replace("`", "'")
    return (
        f"`{shown}` is not something I know. To ask for work, describe it in a few words: "
        f"`/delegate compare our pricing with Acme's`.\n\n{HELP}"
    )


MISSING_SLACK_CREDENTIALS = """\
Delegate cannot start: {missing}.

To create the Slack app:
  1. Open https://api.slack.com/apps and choose "Create New App" -> "From an app manifest".
  2. Pick your workspace and paste the contents of manifest.yml from this repository.
  3. Install the app to the workspace.
  4. Set the environment variables:
       SLACK_BOT_TOKEN       "OAuth & Permissions" -> Bot User OAuth Token (xoxb-...)
       SLACK_SIGNING_SECRET  "Basic Information" -> App Credentials -> Signing Secret
       SLACK_APP_TOKEN       optional, for Socket Mode: "Basic Information" -> App-Level Tokens,
                             create one with the connections:write scope (xapp-...)
  5. Run `delegate doctor` to check everything, then `delegate run`.
"""
