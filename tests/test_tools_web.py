"""web_fetch: readable text from allowed pages, and every SSRF route refused."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.fakes import FakeServer
from tests.fakes.anthropic import Reply
from tests.support.engine import Harness
from workers.config import AuthorityPolicy, WebFetchSettings
from workers.tools.policy import host_allowed
from workers.tools.registry import load_tools
from workers.tools.web import AddressGuard, FetchRefused, fetch, forbidden_address, html_to_text
from workers.workorder import Status

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

ANYWHERE = AuthorityPolicy(tools=["web_fetch"], domains=["*"])
LIMITS = WebFetchSettings(timeout_s=5, max_bytes=50_000, max_chars=5_000, max_redirects=3)
# The test server listens on 127.0.0.1; this guard treats exactly that address as public.
AS_PUBLIC = AddressGuard(also_allowed=frozenset({"127.0.0.1"}))
STRICT = AddressGuard()

PAGE = """<html><head><title>Prices</title><style>p{color:red}</style>
<script>alert('x')</script></head><body><h1>Pricing</h1><p>Basic: <b>$10</b> a month.</p>
<p>See <a href="https://example.com/terms">the terms</a>.</p></body></html>"""


class Site(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []
        self.app.router.add_get("/page", self._page)
        self.app.router.add_get("/big", self._big)
        self.app.router.add_get("/image", self._image)
        self.app.router.add_get("/redirect", self._redirect)
        self.app.router.add_get("/charset/{name}", self._charset)

    async def _page(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        return web.Response(text=PAGE, content_type="text/html")

    async def _big(self, request: web.Request) -> web.Response:
        return web.Response(text="a" * 200_000, content_type="text/plain")

    async def _image(self, request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG", content_type="image/png")

    async def _charset(self, request: web.Request) -> web.Response:
        # A page that declares a codec Python has but cannot decode a document with.
        return web.Response(
            body="<p>Basic: $10 a month \u2013 caf\u00e9</p>".encode(),
            headers={"Content-Type": f"text/html; charset={request.match_info['name']}"},
        )

    async def _redirect(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        raise web.HTTPFound(request.query["to"])


class MapResolver(AbstractResolver):
    """DNS answers from a table, as an attacker's name server would give them."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(f"no such host {host}")
        address = self.table[host]
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [
            {"hostname": host, "host": address, "port": port, "family": fam, "proto": 0, "flags": 0}
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async with Site() as server:
        yield server


async def test_an_allowed_page_comes_back_as_readable_text(site: Site) -> None:
    page = await fetch(f"{site.url}/page", policy=ANYWHERE, limits=LIMITS, guard=AS_PUBLIC)
    assert page.status == 200 and page.content_type == "text/html"
    assert "Pricing" in page.text and "Basic: $10 a month." in page.text
    assert "alert" not in page.text and "color:red" not in page.text
    assert "the terms (https://example.com/terms)" in page.text


async def test_size_limits_truncate_and_binary_is_refused(site: Site) -> None:
    page = await fetch(f"{site.url}/big", policy=ANYWHERE, limits=LIMITS, guard=AS_PUBLIC)
    assert page.truncated and len(page.text) == LIMITS.max_chars
    with pytest.raises(FetchRefused, match="not text"):
        await fetch(f"{site.url}/image", policy=ANYWHERE, limits=LIMITS, guard=AS_PUBLIC)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.0.0.8/",
        "http://192.168.1.1/",
        "http://0.0.0.0/",
        "http://[fd00:ec2::254]/",
        "http://localhost/",
        "http://metadata.google.internal/",
    ],
)
async def test_private_loopback_and_metadata_addresses_are_refused(url: str) -> None:
    with pytest.raises(FetchRefused):
        await fetch(url, policy=ANYWHERE, limits=LIMITS, guard=STRICT)


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.0.0.1", "017700000001"])
async def test_legacy_numeric_addresses_are_read_as_the_address_they_name(host: str) -> None:
    with pytest.raises(FetchRefused, match=r"\(127\.0\.0\.1\) is a loopback address"):
        await fetch(f"http://{host}/", policy=ANYWHERE, limits=LIMITS, guard=STRICT)


async def test_a_legacy_spelling_of_a_public_address_is_refused_with_the_canonical_form() -> None:
    with pytest.raises(FetchRefused, match="write it as 8.8.8.8"):
        await fetch("http://134744072/", policy=ANYWHERE, limits=LIMITS, guard=STRICT)


async def test_a_name_that_resolves_to_a_private_address_is_refused(site: Site) -> None:
    resolver = MapResolver({"intranet.example.com": "10.1.2.3", "sneaky.example.com": "127.0.0.1"})
    for name in resolver.table:
        with pytest.raises(FetchRefused, match="resolves to"):
            await fetch(
                f"http://{name}:{site.port}/page",
                policy=ANYWHERE,
                limits=LIMITS,
                guard=STRICT,
                resolver=resolver,
            )
    assert site.hits == []


async def test_a_redirect_to_a_private_address_is_refused(site: Site) -> None:
    for target in (
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://127.0.0.2/admin",
        "http://[::1]:8080/",
        f"http://internal.example.com:{site.port}/page",
    ):
        resolver = MapResolver({"internal.example.com": "192.168.0.10"})
        with pytest.raises(FetchRefused):
            await fetch(
                f"{site.url}/redirect?to={target}",
                policy=ANYWHERE,
                limits=LIMITS,
                guard=AS_PUBLIC,
                resolver=resolver,
            )
    assert site.hits == ["/redirect"] * 4  # the first hop only; nothing behind it was reached


async def test_a_redirect_within_the_rules_is_followed(site: Site) -> None:
    page = await fetch(
        f"{site.url}/redirect?to=/page", policy=ANYWHERE, limits=LIMITS, guard=AS_PUBLIC
    )
    assert "Pricing" in page.text and page.url.endswith("/page")


async def test_domains_outside_the_policy_are_refused(site: Site) -> None:
    policy = AuthorityPolicy(tools=["web_fetch"], domains=["example.com"])
    assert host_allowed("example.com", policy) and host_allowed("docs.example.com", policy)
    assert not host_allowed("example.com.evil.net", policy) and not host_allowed("127.0.0.1", policy)
    with pytest.raises(FetchRefused, match="not among the domains"):
        await fetch(f"{site.url}/page", policy=policy, limits=LIMITS, guard=AS_PUBLIC)
    with pytest.raises(FetchRefused, match="only http and https"):
        await fetch("file:///etc/passwd", policy=ANYWHERE, limits=LIMITS, guard=STRICT)


async def test_private_networks_open_only_when_the_policy_says_so(site: Site) -> None:
    policy = AuthorityPolicy(tools=["web_fetch"], domains=["*"], allow_private_network=True)
    guard = AddressGuard(allow_private_network=True)
    page = await fetch(f"{site.url}/page", policy=policy, limits=LIMITS, guard=guard)
    assert "Pricing" in page.text


def test_address_classification() -> None:
    import ipaddress

    assert forbidden_address(ipaddress.ip_address("8.8.8.8")) is None
    assert "link-local" in (forbidden_address(ipaddress.ip_address("169.254.169.254")) or "")
    assert forbidden_address(ipaddress.ip_address("100.64.0.1")) is not None  # carrier NAT
    assert forbidden_address(ipaddress.ip_address("::ffff:10.0.0.1")) is not None
    assert "Hello world" in html_to_text("<p>Hello <i>world</i></p><script>x</script>")


async def test_ssrf_attempts_in_a_run_are_refused_and_count_as_forbidden(harness: Harness) -> None:
    h = harness
    order = await h.order(authority_policy="research")
    h.anthropic.script(
        Reply.tool("web_fetch", {"url": "http://169.254.169.254/latest/meta-data/"}),
        Reply.tool("web_fetch", {"url": "http://127.0.0.1:5432/"}),
        Reply.tool("web_fetch", {"url": "http://[::1]/"}),
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "exception"
    row = await h.store.orders.get_row(order.id or "")
    assert row.status == Status.EXCEPTION.value and row.exception_kind == "authority"
    calls = await h.store.runs.tool_calls(order.id or "")
    assert [(c.name, c.allowed, c.outcome) for c in calls] == [("web_fetch", False, "forbidden")] * 3
    second = h.anthropic.requests[1]["messages"][-1]["content"][0]
    assert second["is_error"] and "link-local" in second["content"]


@pytest.mark.parametrize("charset", ["idna", "undefined", "punycode", "base64", "rot13", "junk"])
async def test_a_page_in_an_unreadable_charset_is_a_clean_tool_result(
    harness: Harness, site: Site, charset: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 19, item 13: a declared charset that cannot decode a page never crashes the run."""
    h = harness
    h.tools = load_tools(h.settings, use_entry_points=False, also_allowed=frozenset({"127.0.0.1"}))
    await h.order(authority_policy="research")
    h.anthropic.script(
        Reply.tool("web_fetch", {"url": f"{site.url}/charset/{charset}"}),
        Reply.tool("submit_deliverable", {"content": "Basic is $10.", "summary": "Done."}),
    )
    caplog.set_level(logging.DEBUG)
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind != "exception"
    result = h.anthropic.requests[1]["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and "Basic: $10 a month" in str(result["content"])
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
