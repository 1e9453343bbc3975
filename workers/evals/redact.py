"""Redaction for suites exported from production: people, addresses and secrets out, the
substance a verifier judges (amounts, dates, names of things) kept."""

from __future__ import annotations

import re
from collections.abc import Sequence

from workers.logs import scrub_secrets, scrub_token_shapes, secrets_to_scrub

# Slack's <https://…|label> form whole; a bare URL without the punctuation that ends its sentence.
_URL = re.compile(
    r"<https?://[^>]*>|\b(?:https?://|www\.)[^\s<>|]*[^\s<>|.,;:!?)\]}'\"]",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"(?:<mailto:)?\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b(?:\|[^>]*>|>)?")
_MENTION = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^>]*)?>|(?<![\w@])@[UW][A-Z0-9]{6,}\b")
_CHANNEL = re.compile(r"<#[CG][A-Z0-9]+(?:\|[^>]*)?>|<!(?:here|channel|everyone)[^>]*>|<!subteam\^[^>]+>")
_BARE_ID = re.compile(r"\b[UWCG](?=[A-Z0-9]*\d)[A-Z0-9]{8,}\b")
# A long run of letters and digits mixed (an API key, a token, a password), or of digits alone
# (an account, card or phone number): amounts and years are far shorter.
_SECRET = re.compile(r"\b(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{24,}\b")
_LONG_NUMBER = re.compile(r"(?<![\d.,])\+?\d(?:[ -]?\d){8,}(?![\d.,]*\d)")

PLACEHOLDERS = ("[url]", "[email]", "[person]", "[channel]", "[secret]", "[number]")


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with URLs, emails, Slack mentions and ids, configured secrets, key and token
    shapes and long secret-looking numbers replaced by placeholders."""
    text = scrub_secrets(text, secrets_to_scrub(secrets))
    text = scrub_token_shapes(text).replace("[redacted]", "[secret]")
    text = _URL.sub("[url]", text)
    text = _EMAIL.sub("[email]", text)
    text = _MENTION.sub("[person]", text)
    text = _CHANNEL.sub("[channel]", text)
    text = _BARE_ID.sub("[person]", text)
    text = _SECRET.sub("[secret]", text)
    return _LONG_NUMBER.sub("[number]", text)
