"""Which models a provider's key can use: its documented `GET /v1/models`, over aiohttp.

Start-up and `delegate doctor` ask this of every configured provider. Asking through the SDKs
meant importing them first, about two seconds of CPU for their thousands of pydantic classes,
on every start, before the bot could say a word; the SDKs are now loaded by the first model
call (workers.providers.router)."""

from __future__ import annotations

from typing import Any

import aiohttp

ANTHROPIC_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
OPENAI_URL = "https://api.openai.com/v1"
_PAGE = 1000


class CatalogError(Exception):
    """The provider answered the listing with an HTTP error."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


async def anthropic_models(api_key: str, base_url: str | None) -> frozenset[str]:
    """Every model id the key may use, following the pages."""
    url = f"{(base_url or ANTHROPIC_URL).rstrip('/')}/v1/models"
    headers = {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}
    models: set[str] = set()
    params: dict[str, Any] = {"limit": _PAGE}
    async with aiohttp.ClientSession(trust_env=True) as session:
        while True:
            page = await _get(session, url, headers, params)
            models.update(m["id"] for m in page.get("data") or [])
            if not page.get("has_more") or not page.get("last_id"):
                return frozenset(models)
            params = {"limit": _PAGE, "after_id": page["last_id"]}


async def openai_models(api_key: str | None, base_url: str | None) -> frozenset[str]:
    """Every model id the key may use (an OpenAI-compatible server may need no key)."""
    url = f"{(base_url or OPENAI_URL).rstrip('/')}/models"
    headers = {"Authorization": f"Bearer {api_key or 'unused'}"}
    async with aiohttp.ClientSession(trust_env=True) as session:
        page = await _get(session, url, headers, {})
    return frozenset(m["id"] for m in page.get("data") or [])


async def _get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], params: dict[str, Any]
) -> dict[str, Any]:
    async with session.get(url, headers=headers, params=params) as response:
        if response.status >= 400:
            raise CatalogError(response.status)
        body = await response.json(content_type=None)
    if not isinstance(body, dict):
        raise CatalogError(response.status)
    return body
