"""web_fetch never reaches a loopback, private, link-local or metadata address, however the
URL spells it: a canary served on 127.0.0.1 must never be hit, directly or through a redirect
from an allowed page, and the model gets a refusal it can act on."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.fakes import FakeServer
from tests.fakes.anthropic import Reply
from tests.support.engine import Harness
from workers.config import AuthorityPolicy, WebFetchSettings
from workers.tools.web import AddressGuard, FetchRefused, GuardedConnector, fetch
from workers.workorder import Status

ANYWHERE = AuthorityPolicy(tools=["web_fetch"], domains=["*"])
LIMITS = WebFetchSettings(timeout_s=5, max_bytes=50_000, max_chars=5_000, max_redirects=3)
# The "public" site lives on 127.0.0.2; the canary on 127.0.0.1 stays off limits.
PUBLIC_ADDRESS = "127.0.0.2"
GUARD = AddressGuard(also_allowed=frozenset({PUBLIC_ADDRESS}))

# Every spelling names the canary's host (or another forbidden one); {port} is the canary's.
SPELLINGS = [
    "127。0。0。1:{port}",  # ideographic full stops
    "127．0．0．1:{port}",  # full-width full stops
    "127｡0｡0｡1:{port}",  # half-width ideographic full stops
    "１２７.０.０.１:{port}",  # full-width digits
    "①②⑦.⓪.⓪.①:{port}",  # circled digits, mapped by IDNA
    "2130706433:{port}",  # decimal
    "017700000001:{port}",  # octal
    "0x7f000001:{port}",  # hex
    "0x7f.1:{port}",  # short hex
    "127.1:{port}",  # short
    "0177.0.0.1:{port}",  # dotted octal
    "127.0.0.1.:{port}",  # trailing dot
    "localhost.:{port}",
    "ＬＯＣＡＬＨＯＳＴ:{port}",
    "0.0.0.0:{port}",  # connects to this host on Linux
    "0:{port}",
    "[::1]:{port}",
    "[::ffff:127.0.0.1]:{port}",  # IPv4-mapped
    "[::ffff:7f00:1]:{port}",
    "[64:ff9b::127.0.0.1]:{port}",  # NAT64
    "[::127.0.0.1]:{port}",  # IPv4-compatible
    "[2002:7f00:1::]:{port}",  # 6to4
    "allowed.example@127.0.0.1:{port}",  # userinfo
    "allowed.example:x@127。0。0。1:{port}",
    "rebind.example:{port}",  # a name whose DNS answer is loopback
    "169.254.169.254",  # cloud metadata
    "[fd00:ec2::254]",
    "metadata.google.internal",
    "[fe80::1]",
    "10.0.0.1",
    "192.168.0.1",
    "100.64.0.1",
]


class Canary(FakeServer):
    """Anything served here is a secret: one hit means the guard failed."""

    def __init__(self) -> None:
        super().__init__(host="127.0.0.1")
        self.hits: list[str] = []
        self.app.router.add_route("*", "/{tail:.*}", self._hit)

    async def _hit(self, request: web.Request) -> web.Response:
        self.hits.append(request.path_qs)
        return web.Response(text="SECRET-CANARY", content_type="text/plain")


class PublicSite(FakeServer):
    """An allowed page that redirects wherever it is told to."""

    def __init__(self) -> None:
        super().__init__(host=PUBLIC_ADDRESS)
        self.app.router.add_get("/go", self._go)
        self.app.router.add_get("/page", self._page)

    async def _go(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text="<p>public</p>", content_type="text/html")


class Resolver(AbstractResolver):
    """An attacker's name server: rebind.example is loopback, public.example is the site."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        table = {"rebind.example": "127.0.0.1", "public.example": PUBLIC_ADDRESS}
        if host not in table:
            raise OSError(f"no such host {host}")
        return [
            {
                "hostname": host,
                "host": table[host],
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    async with Canary() as server:
        yield server


@pytest.fixture
async def public() -> AsyncIterator[PublicSite]:
    async with PublicSite() as server:
        yield server


async def test_the_public_site_is_reachable_so_refusals_below_mean_something(
    public: PublicSite,
) -> None:
    page = await fetch(
        f"http://public.example:{public.port}/page",
        policy=ANYWHERE,
        limits=LIMITS,
        guard=GUARD,
        resolver=Resolver(),
    )
    assert page.text == "public"


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_no_spelling_of_a_forbidden_host_reaches_it(
    spelling: str, canary: Canary, public: PublicSite
) -> None:
    target = f"http://{spelling.format(port=canary.port)}/secret"
    with pytest.raises(FetchRefused) as direct:
        await fetch(target, policy=ANYWHERE, limits=LIMITS, guard=GUARD, resolver=Resolver())
    with pytest.raises(FetchRefused) as redirected:
        await fetch(
            f"{public.url}/go?to={target}",
            policy=ANYWHERE,
            limits=LIMITS,
            guard=GUARD,
            resolver=Resolver(),
        )
    assert canary.hits == []
    for refusal in (direct.value, redirected.value):
        assert refusal.authority
        assert any(
            word in str(refusal)
            for word in (
                "loopback",
                "private",
                "link-local",
                "reserved",
                "local or internal",
                "non-public",
            )
        ), str(refusal)


async def test_the_connector_alone_refuses_ip_literals_that_skip_the_resolver(
    canary: Canary,
) -> None:
    """Even a request that never passed the URL check cannot connect to a forbidden peer."""
    async with aiohttp.ClientSession(connector=GuardedConnector(AddressGuard())) as session:
        for url in (canary.url, f"http://0.0.0.0:{canary.port}/", f"http://[::1]:{canary.port}/"):
            with pytest.raises(aiohttp.ClientConnectorError, match=r"loopback|private"):
                await session.get(url)
    assert canary.hits == []


async def test_the_model_is_told_why_and_can_carry_on(harness: Harness, canary: Canary) -> None:
    h = harness
    order = await h.order(authority_policy="research")
    h.anthropic.script(
        Reply.tool("web_fetch", {"url": f"http://127。0。0。1:{canary.port}/admin"}),
        Reply.tool("submit_deliverable", {"content": "Done without the internal page."}),
    )
    await h.run_next()
    assert canary.hits == []
    refusal = h.anthropic.requests[1]["messages"][-1]["content"][0]
    assert refusal["is_error"]
    assert "127.0.0.1" in refusal["content"] and "loopback" in refusal["content"]
    assert "only public web pages" in refusal["content"]
    row = await h.store.orders.get_row(order.id or "")
    assert row.status != Status.EXCEPTION.value
