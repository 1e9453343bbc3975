"""Routing by role and workload class, failover, budget reservations and the record of every call."""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from workers import logs, telemetry
from workers.budget import (
    BudgetGuard,
    Reservation,
    call_cost_micro_usd,
    estimate_input_tokens,
    quota_week,
    usd_to_micro,
    worst_case_micro_usd,
)
from workers.config import Role, Settings
from workers.errors import ProviderRejected, ProviderUnavailable, RetryLater
from workers.models import LlmCall, utcnow
from workers.providers.base import (
    ModelReply,
    ModelRequest,
    ProviderClient,
    ProviderFailure,
    Usage,
)
from workers.workorder import WorkloadClass, parse_order_id

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic
    from openai import AsyncOpenAI

    from workers.store import Store  # the store imports workers.providers.base at type-check time

log = logging.getLogger(__name__)

_PROVIDER_MODULES = {
    "anthropic": "workers.providers.anthropic",
    "openai": "workers.providers.openai",
}
"""Where each provider lives; importing the module imports its SDK."""

DEFAULT_CALL_TIMEOUT_S = 600.0
# When every model keeps answering 429 with short Retry-After waits, come back after this long.
RATE_LIMITED_RETRY_S = 60.0


class ModelRouter:
    """The one way Delegate calls a model."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        anthropic: AsyncAnthropic | None,
        openai: AsyncOpenAI | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.providers: dict[str, ProviderClient] = {}
        """The providers built so far (see `_provider`)."""
        self._unbuilt: dict[str, Callable[[], ProviderClient]] = {}
        if anthropic is not None:
            self.providers["anthropic"] = self._anthropic(anthropic)
        if openai is not None:
            self.providers["openai"] = self._openai(openai)

    @classmethod
    def from_settings(cls, settings: Settings, store: Store) -> ModelRouter:
        """A router for the configured keys and base URLs; each SDK client is made, and its SDK
        imported, on that provider's first call. Together the SDKs take seconds of CPU to
        import, which a process that never calls a model (the CLI, a bot that is only asked
        questions its intake answers from the rules) should not pay at start.

        An OpenAI base URL without a key is allowed: that is a local OpenAI-compatible server.
        """
        router = cls(settings, store, anthropic=None, openai=None)
        if (anthropic_key := settings.anthropic_api_key) is not None:

            def anthropic() -> ProviderClient:
                from anthropic import AsyncAnthropic, DefaultAsyncHttpxClient

                from workers.providers.tls import shared_tls_context

                return router._anthropic(
                    AsyncAnthropic(
                        api_key=anthropic_key.get_secret_value(),
                        base_url=settings.anthropic_base_url,
                        http_client=DefaultAsyncHttpxClient(verify=shared_tls_context()),
                    )
                )

            router._unbuilt["anthropic"] = anthropic
        if settings.openai_api_key is not None or settings.openai_base_url:
            openai_key = settings.openai_api_key

            def openai() -> ProviderClient:
                from workers.providers.openai import make_openai_client

                return router._openai(
                    make_openai_client(
                        api_key=openai_key.get_secret_value() if openai_key else None,
                        base_url=settings.openai_base_url,
                        inline_retry_after_s=settings.engine.inline_retry_after_s,
                    )
                )

            router._unbuilt["openai"] = openai
        return router

    # An SDK retry is a second billable request under one reservation; retries happen here
    # instead, each one reserved and charged.
    def _anthropic(self, client: AsyncAnthropic) -> ProviderClient:
        from workers.providers.anthropic import AnthropicProvider

        return AnthropicProvider(
            client.with_options(max_retries=0),
            inline_retry_after_s=self.settings.engine.inline_retry_after_s,
        )

    def _openai(self, client: AsyncOpenAI) -> ProviderClient:
        from workers.providers.openai import OpenAIProvider

        return OpenAIProvider(client.with_options(max_retries=0))

    async def preload(self) -> None:
        """Import the SDKs of providers not built yet, in a thread. Imported on the first call
        instead, they would hold up the event loop for a second or more (measured: a separate
        worker's first status update 1.2 s late, against 50 ms for the next ones)."""
        modules = [_PROVIDER_MODULES[name] for name in self._unbuilt]
        if modules:
            await asyncio.to_thread(lambda: [importlib.import_module(m) for m in modules])

    @property
    def configured(self) -> frozenset[str]:
        """The providers that have a key (or, for OpenAI, a base URL), built or not."""
        return frozenset(self.providers) | frozenset(self._unbuilt)

    def _provider(self, name: str) -> ProviderClient | None:
        """Provider `name`, built on first use; None when it has no key configured."""
        build = self._unbuilt.get(name)
        if build is not None:
            self.providers[name] = build()  # a failure here fails this call and is tried again
            del self._unbuilt[name]
        return self.providers.get(name)

    async def close(self) -> None:
        for provider in self.providers.values():
            client = getattr(provider, "client", None)
            close = getattr(client, "close", None)
            if close is not None:
                await close()

    async def complete(
        self,
        role: Role,
        workload_class: WorkloadClass | str,
        request: ModelRequest,
        *,
        order_id: str | None = None,
        attempt_id: int | None = None,
        budget: BudgetGuard | None = None,
        timeout_s: float | None = None,
        requester: str | None = None,
    ) -> ModelReply:
        """One model call on the route for `role` and `workload_class`, failing over if needed.

        A call with no order but a `requester` (intake) is charged to that person's team.

        Raises BudgetExceeded (nothing was sent), ProviderRejected (retrying will not help; the
        message is a plain explanation), RetryLater (come back after `after_s`) or
        ProviderUnavailable (every configured model failed).
        """
        with logs.scope(role=role, order=order_id):
            reply = await self._complete(
                role,
                workload_class,
                request,
                order_id=order_id,
                attempt_id=attempt_id,
                budget=budget,
                timeout_s=timeout_s,
                requester=requester,
            )
        return self._without_secrets(reply)

    def _without_secrets(self, reply: ModelReply) -> ModelReply:
        """The deployment's secrets removed from what the model said (it may have read them in
        a thread or been asked for them), before any of it is stored, recorded or posted."""
        secrets = logs.secrets_to_scrub(self.settings.secret_values())
        reply.text = logs.scrub_secrets(reply.text, secrets)
        for call in reply.tool_calls:
            if call.arguments is not None:
                call.arguments = logs.scrub_secrets(call.arguments, secrets)
            call.raw_arguments = logs.scrub_secrets(call.raw_arguments, secrets)
        return reply

    async def _complete(
        self,
        role: Role,
        workload_class: WorkloadClass | str,
        request: ModelRequest,
        *,
        order_id: str | None,
        attempt_id: int | None,
        budget: BudgetGuard | None,
        timeout_s: float | None,
        requester: str | None,
    ) -> ModelReply:
        """`complete`, inside the log scope of its role."""
        route = self.settings.route(role, workload_class)
        candidates = [ref for ref in (route.primary, route.fallback) if ref is not None]
        failures: list[ProviderFailure] = []
        for ref in candidates:
            provider = self._provider(ref.provider)
            if provider is None:
                failures.append(
                    ProviderFailure("transient", f"no {ref.provider} API key is configured")
                )
                continue
            attempts = self.settings.engine.provider_attempts
            for attempt in range(attempts):
                try:
                    return await self._call(
                        provider,
                        ref.model,
                        role,
                        request,
                        order_id=order_id,
                        attempt_id=attempt_id,
                        budget=budget,
                        timeout_s=timeout_s or DEFAULT_CALL_TIMEOUT_S,
                        requester=requester,
                    )
                except ProviderFailure as failure:
                    if failure.kind == "reject":
                        raise ProviderRejected(failure.explanation) from failure
                    if failure.kind == "defer":
                        after_s = failure.after_s or RATE_LIMITED_RETRY_S
                        raise RetryLater(after_s, failure.explanation) from failure
                    if attempt + 1 < attempts:
                        await self.sleep(self._backoff_s(failure, attempt))
                        continue
                    log.warning(
                        "model call failed, trying the next route",
                        extra={"order": order_id, "model": str(ref), "reason": failure.explanation},
                    )
                    failures.append(failure)
        if failures and all(f.status == 429 for f in failures):
            after = max((f.after_s or 0.0) for f in failures) or RATE_LIMITED_RETRY_S
            raise RetryLater(after, "every configured model is rate limiting us")
        reasons = "; ".join(f.explanation for f in failures) or "no model is configured"
        raise ProviderUnavailable(f"no model could take the call: {reasons}")

    def _observe(
        self,
        provider: str,
        model: str,
        role: str,
        outcome: str,
        latency_ms: int,
        usage: Usage | None,
        input_tokens: int,
        max_output: int,
    ) -> None:
        """The call in /metrics, costed as the ledger costs it (worst case when usage is unknown)."""
        price = self.settings.price(model)
        cost = (
            worst_case_micro_usd(price, input_tokens, max_output)
            if usage is None
            else call_cost_micro_usd(price, usage)
        )
        known = usage or Usage()
        telemetry.record_model_call(
            provider=provider,
            model=model,
            role=role,
            outcome=outcome,
            latency_s=latency_ms / 1000,
            tokens={
                "input": known.input_tokens,
                "output": known.output_tokens,
                "cache_write": known.cache_write_tokens,
                "cache_read": known.cache_read_tokens,
            },
            cost_usd=cost / 1_000_000,
        )

    def _searches(self, provider: ProviderClient, request: ModelRequest) -> tuple[int, int]:
        """How many web searches this provider may run in the call, and the price of each
        (micro-dollars): none when it has no price configured or cannot keep to the domains."""
        search = request.web_search
        price = self.settings.tools.web_search.price_per_1000_usd.get(provider.name)
        if search is None or price is None or search.max_uses <= 0:
            return 0, 0
        uses = search.max_uses
        if provider.name == "openai":
            # Chat Completions: one search per call, and no way to keep it to some domains.
            uses = 1 if search.allowed_domains is None else 0
        return uses, math.ceil(usd_to_micro(price) / 1000)

    def _backoff_s(self, failure: ProviderFailure, attempt: int) -> float:
        """The provider's Retry-After when it gave a short one, else exponential backoff."""
        engine = self.settings.engine
        if failure.after_s is not None:
            return min(failure.after_s, engine.inline_retry_after_s)
        return engine.provider_backoff_s * (2**attempt)

    async def _call(
        self,
        provider: ProviderClient,
        model: str,
        role: Role,
        request: ModelRequest,
        *,
        order_id: str | None,
        attempt_id: int | None,
        budget: BudgetGuard | None,
        timeout_s: float,
        requester: str | None = None,
    ) -> ModelReply:
        searches, search_micro_usd = self._searches(provider, request)
        if budget is not None:
            input_tokens = budget.estimate_input_tokens(request, model)
            reservation: Reservation | None = await budget.reserve(
                role=role,
                provider=provider.name,
                model=model,
                input_tokens=input_tokens,
                want_output_tokens=request.max_output_tokens,
                searches=searches,
                search_micro_usd=search_micro_usd,
            )
            assert reservation is not None
            max_output = reservation.max_output_tokens
            searches = reservation.searches
        else:
            input_tokens = estimate_input_tokens(request)
            reservation, max_output = None, request.max_output_tokens

        async def record(
            usage: Usage | None, outcome: str, latency_ms: int, *, error: str | None = None
        ) -> None:
            self._observe(
                provider.name, model, role, outcome, latency_ms, usage, input_tokens, max_output
            )
            if budget is not None and reservation is not None:
                await budget.settle(
                    reservation,
                    usage=usage,
                    outcome=outcome,
                    latency_ms=latency_ms,
                    provider=provider.name,
                    model=model,
                    error=error,
                )
                return
            price = self.settings.price(model)
            if usage is None:
                cost = worst_case_micro_usd(price, input_tokens, max_output)
                usage = Usage()
            else:
                cost = call_cost_micro_usd(price, usage)
            await self.store.ledger.record_llm_call(
                LlmCall(
                    order_id=parse_order_id(order_id) if order_id else None,
                    attempt_id=attempt_id,
                    role=role,
                    provider=provider.name,
                    model=model,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                    cost_micro_usd=cost,
                    latency_ms=latency_ms,
                    outcome=outcome,
                    error=error,
                    requester=requester,
                    team=self.settings.team_of(requester) if requester else None,
                    quota_week=quota_week(utcnow()) if requester else None,
                )
            )

        if request.web_search is not None:
            # Only the searches reserved (none: the budget covers none, so none is offered).
            search = replace(request.web_search, max_uses=searches) if searches else None
            request = replace(request, web_search=search)
        started = self.clock()

        def elapsed_ms() -> int:
            return int((self.clock() - started) * 1000)

        try:
            reply = await provider.complete(
                model, request, max_output_tokens=max_output, timeout_s=timeout_s
            )
        except ProviderFailure as failure:
            # A refused or failed HTTP exchange is not billed; a timeout or cut connection may be.
            usage = None if failure.billed == "unknown" else Usage()
            await asyncio.shield(
                record(usage, f"failed:{failure.kind}", elapsed_ms(), error=failure.explanation)
            )
            raise
        except BaseException as exc:
            # Cancelled (deadline, cancel button, shutdown) or broken: usage unknown, worst case.
            outcome = "interrupted" if isinstance(exc, asyncio.CancelledError) else "error"
            await asyncio.shield(record(None, outcome, elapsed_ms(), error=type(exc).__name__))
            raise
        outcome = "refusal" if reply.stop_reason == "refusal" else "ok"
        await asyncio.shield(record(reply.usage, outcome, reply.latency_ms))
        if budget is not None:
            budget.meter.observe(request, reply.usage, model)
        return reply
