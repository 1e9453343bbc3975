"""The agent loop: one attempt at a work order, checkpointed after every step.

The model works through tool calls until it calls `submit_deliverable`, or a limit stops it. The
history is saved after each model reply and after each round of tool results, so a new attempt
(after a crash, a shutdown, a requester's reply or a provider back-off) resumes where the last
one stopped: tool calls without results are run again (tools with side effects are idempotent
per tool-use id) and a parked `ask_requester` gets the requester's reply as its result.

Every way a run can end is decided here, once, and recorded with `Store.finish_run`. This is the
one orchestrator allowed to be long: the loop, its checkpoints and its endings read best together;
the shapes of the conversation it holds live in `workers.transcript`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from workers import telemetry
from workers.budget import BudgetGuard, ToolCount
from workers.config import Settings
from workers.db import is_connection_error
from workers.errors import (
    AuthorityDenied,
    BudgetExceeded,
    LeaseLost,
    ProviderRejected,
    ProviderUnavailable,
    RetryLater,
)
from workers.keys import exception_key, question_key, result_key
from workers.models import Deliverable, RunAttempt, ToolCall, utcnow
from workers.permissions import approvers_of
from workers.progress import ExceptionKind
from workers.providers import ModelReply, ModelRequest, ModelRouter, ToolUse, WebSearchRequest
from workers.states import WaitKind
from workers.store import OutboxItem, Store, as_utc
from workers.store.approvals import CallArguments
from workers.store.outbox import exception_notice
from workers.store.runs import Checkpoint
from workers.tools import ToolContext, ToolForbidden, ToolInputError, ToolRegistry, denial
from workers.tools.base import Tool
from workers.tools.policy import decision, origin, why_ask
from workers.tools.web_search import is_server_side
from workers.transcript import (
    REVISE,
    assistant_message,
    blocks_of,
    first_message,
    inbox_note,
    last_assistant,
    system_prompt,
    tool_result,
)
from workers.untrusted import fence
from workers.verify import CriterionVerdict, VerificationReport, verify
from workers.workorder import Status, WorkOrder, parse_order_id

log = logging.getLogger(__name__)

TOOL_TIMEOUT_S = 120.0
MAX_NUDGES = 2
# A run that found its team's week spent is requeued after a back-off within these bounds.
QUOTA_BACKOFF_MIN_S = 5.0
QUOTA_BACKOFF_MAX_S = 300.0
RESULT_EXCERPT_CHARS = 500
DATABASE_DROPPED = "requeued:database"
"""How an attempt ended whose database connection failed (not counted as a crash)."""
DATABASE_BACKOFF_S = 1.0  # doubled for each such attempt in a row
DATABASE_RETRY_PAUSES_S: tuple[float | None, ...] = (0.2, 1.0, 3.0, None)

NUDGE = (
    "Continue with the work order. When the deliverable is complete, hand it in with "
    "submit_deliverable; if you cannot go on without information only the requester has, "
    "call ask_requester."
)
NUDGE_CUT_OFF = (
    "Your last reply was cut off at the output limit. Continue in shorter steps, and hand the "
    "result in with submit_deliverable."
)


@dataclass
class RunControl:
    """How the runtime reaches a running agent (cf. procrastinate's job context).

    `request_yield()` asks the run to stop after the current step (graceful shutdown);
    `stop(reason)` is set before the runtime cancels the run's task, so the run knows why.
    """

    yield_requested: bool = False
    stop_reason: Literal["shutdown", "cancelled", "lease_lost"] | None = None
    ending: bool = False
    """Set by the run once it starts recording how it ended; the lease watcher then lets it be."""

    def request_yield(self) -> None:
        self.yield_requested = True

    def stop(self, reason: Literal["shutdown", "cancelled", "lease_lost"]) -> None:
        self.stop_reason = reason


@dataclass(frozen=True)
class Outcome:
    kind: Literal["done", "parked", "requeued", "exception", "cancelled", "lost"]
    detail: str = ""


class _Yield(Exception):
    """The runtime asked the run to stop at a step boundary."""


class _Stop(Exception):
    """The run ends in exception of `kind`."""

    def __init__(self, kind: ExceptionKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class _Run:
    order: WorkOrder
    number: int
    attempt: RunAttempt
    guard: BudgetGuard
    control: RunControl
    started: float
    elapsed_before_ms: int
    clock: Callable[[], float]
    messages: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    first_step: int = 0
    """The step this attempt resumed at: each attempt gets `engine.max_steps` of its own."""
    inbox_to_consume: int = 0
    inbox_seen: list[dict[str, Any]] | None = None
    """The inbox as the last checkpoint read it under the order's lock; None: read it again."""
    unsaved: bool = False
    """The model's reply is not checkpointed yet: it rides with the step's next write."""
    unrecorded: list[ToolCall] = field(default_factory=list)
    """Tool calls made and not yet recorded: they ride with the step's next write, which
    follows at once (no other tool runs in between)."""
    forbidden: int = 0
    nudges: int = 0
    pending_calls: list[ToolUse] = field(default_factory=list)
    pending_results: list[dict[str, Any]] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)
    """The tool calls the run parks for (a question, an approval), by tool-use id."""
    submitted: bool = False
    ending: asyncio.Future[Outcome] | None = None

    def elapsed_ms(self) -> int:
        return self.elapsed_before_ms + int((self.clock() - self.started) * 1000)

    @property
    def attempt_id(self) -> int:
        assert self.attempt.id is not None
        return self.attempt.id


@dataclass(frozen=True)
class _Gate:
    """What a call that needs approval may do: go ahead (allowed by `approver`), be refused
    (`refusal`, told to the model), or wait for a person (`waiting`)."""

    approver: str | None = None
    refusal: str | None = None
    waiting: bool = False


class Agent:
    """Runs attempts at work orders. One instance serves every run of a worker process."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        router: ModelRouter,
        tools: ToolRegistry,
        worker_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.router = router
        self.tools = tools
        self.worker_id = worker_id
        self.clock = clock

    async def run(
        self,
        order: WorkOrder,
        attempt: RunAttempt,
        *,
        elapsed_ms: int = 0,
        control: RunControl | None = None,
    ) -> Outcome:
        """One attempt, from claim to the state it leaves the order in."""
        assert order.id is not None
        number = parse_order_id(order.id)
        run = _Run(
            order=order,
            number=number,
            attempt=attempt,
            guard=BudgetGuard(
                self.store.ledger,
                self.settings,
                order_number=number,
                team=order.team,
                budget=order.budget,
                attempt_id=attempt.id,
            ),
            control=control or RunControl(),
            started=self.clock(),
            elapsed_before_ms=elapsed_ms,
            clock=self.clock,
        )
        remaining_s = order.budget.max_wall_clock_s - elapsed_ms / 1000
        out_of_time = (
            f"the wall-clock budget of {order.budget.max_wall_clock_s} s is used up "
            "(time spent queued or waiting for the requester does not count)"
        )
        if remaining_s <= 0:
            return await self._end(run, self._stop_for(run, "budget", out_of_time))
        deadline = asyncio.timeout(remaining_s)
        try:
            async with deadline:
                return await self._drive(run)
        except TimeoutError:
            if not deadline.expired():
                return await self._end(run, self._stop_for(run, "crashed", "a step timed out"))
            return await self._end(run, self._stop_for(run, "budget", out_of_time))
        except BudgetExceeded as exc:
            if exc.limit == "team_quota":
                return await self._end(
                    run, self._wait_for_quota(run, str(exc), needed_micro_usd=exc.needed_micro_usd)
                )
            return await self._end(run, self._stop_for(run, "budget", str(exc)))
        except AuthorityDenied as exc:
            return await self._end(run, self._stop_for(run, "authority", str(exc)))
        except (ProviderRejected, ProviderUnavailable) as exc:
            return await self._end(run, self._stop_for(run, "provider", str(exc)))
        except RetryLater as exc:
            return await self._end(
                run,
                self._requeue(
                    run,
                    f"the model provider asked us to wait {exc.after_s:g} s",
                    after_s=exc.after_s,
                    wait_reason=f"waiting for the model provider: {exc}",
                    wait_kind=WaitKind.PROVIDER,
                ),
            )
        except _Stop as exc:
            return await self._end(run, self._stop_for(run, exc.kind, str(exc)))
        except _Yield:
            return await self._end(run, self._requeue(run, "the worker is shutting down"))
        except LeaseLost:
            return await self._end(run, self._lost(run))
        except asyncio.CancelledError:
            if run.ending is not None:
                # Cancelled while recording its ending: let that finish, it is what happened.
                return await asyncio.shield(run.ending)
            reason = run.control.stop_reason
            if reason is None:
                raise
            if reason == "shutdown":
                return await self._end(run, self._requeue(run, "the worker is shutting down"))
            if reason == "cancelled":
                return await self._end(run, self._cancelled(run))
            return await self._end(run, self._lost(run))
        except Exception as exc:
            if is_connection_error(exc):
                return await self._end(run, self._database_dropped(run, exc))
            log.exception("run failed", extra={"order": order.id})
            message = f"the run failed unexpectedly ({type(exc).__name__}: {exc})"
            return await self._end(run, self._stop_for(run, "crashed", message))

    async def _end(self, run: _Run, finish: Awaitable[Outcome]) -> Outcome:
        """Record how the run ended, shielded: a cancellation must not cut the bookkeeping."""
        run.control.ending = True
        first = run.ending
        if first is not None and first.done() and not first.cancelled() and first.exception():
            run.ending = None  # recording the first ending failed (e.g. LeaseLost): record this
        if run.ending is None:
            run.ending = asyncio.ensure_future(self._saved_then(run, finish))
        else:  # already ending; the first ending stands
            _close(finish)
        return await asyncio.shield(run.ending)

    # The loop

    async def _drive(self, run: _Run) -> Outcome:
        await self._restore(run)
        await self._status(run, "Resuming" if run.step else "Starting")
        if run.submitted:
            return await self._end(run, self._complete(run))
        if run.pending_calls or run.pending_results:
            effect = await self._run_tools(run, run.pending_calls, run.pending_results)
            run.pending_calls, run.pending_results = [], []
            if effect == "finish":
                return await self._end(run, self._complete(run))
            if effect == "park":
                return await self._end(run, self._park(run))
        else:
            await self._checkpoint(run)
        policy = self.settings.policies[run.order.authority_policy]
        granted_tools = self.tools.offered(policy)
        offered = [tool.spec for tool in granted_tools if not is_server_side(tool)]
        searching = any(is_server_side(tool) for tool in granted_tools)
        system = system_prompt(run.order, self.settings)
        while True:
            if run.control.yield_requested:
                raise _Yield
            if run.step - run.first_step >= self.settings.engine.max_steps:
                raise _Stop(
                    "stalled",
                    f"the run took {run.step - run.first_step} steps without submitting a "
                    "deliverable",
                )
            await self._read_inbox(run)
            request = ModelRequest(
                system=system,
                messages=run.messages,
                tools=offered,
                max_output_tokens=self.settings.engine.max_output_tokens,
                web_search=await self._web_search(run) if searching else None,
            )
            remaining_s = run.order.budget.max_wall_clock_s - run.elapsed_ms() / 1000
            reply = await self.router.complete(
                "execute",
                run.order.workload_class,
                request,
                order_id=run.order.id,
                attempt_id=run.attempt_id,
                budget=run.guard,
                timeout_s=max(1.0, remaining_s),
            )
            run.messages.append(assistant_message(reply))
            run.step += 1
            await self._count_searches(run, reply)
            if reply.stop_reason == "refusal":
                await self._checkpoint(run)
                said = f": {reply.text.strip()[:500]}" if reply.text.strip() else ""
                raise _Stop("refusal", f"the model declined to do this work{said}")
            if not reply.tool_calls:
                run.nudges += 1
                if run.nudges > MAX_NUDGES:
                    await self._checkpoint(run)
                    raise _Stop(
                        "stalled", "the model kept answering without submitting a deliverable"
                    )
                nudge = NUDGE_CUT_OFF if reply.stop_reason == "max_tokens" else NUDGE
                run.messages.append({"role": "user", "content": [{"type": "text", "text": nudge}]})
                await self._checkpoint(run)
                continue
            run.nudges = 0
            # Checkpointed with the first tool call's count (or whatever the step writes
            # first), before any tool runs: one transaction instead of two.
            run.unsaved = True
            effect = await self._run_tools(run, reply.tool_calls, [])
            if effect == "finish":
                return await self._end(run, self._complete(run))
            if effect == "park":
                return await self._end(run, self._park(run))

    async def _run_tools(
        self, run: _Run, calls: list[ToolUse], results: list[dict[str, Any]]
    ) -> Literal["finish", "park"] | None:
        """Run one reply's tool calls (questions last) and checkpoint their results."""
        results = list(results)
        effect: Literal["finish", "park"] | None = None
        ordered = [c for c in calls if c.name != "ask_requester"] + [
            c for c in calls if c.name == "ask_requester"
        ]
        asked = False
        for call in ordered:
            if effect == "finish":
                results.append(tool_result(call.id, "Not run: the deliverable was submitted."))
                continue
            if call.name == "ask_requester" and asked:
                results.append(tool_result(call.id, "Ask one question at a time.", is_error=True))
                continue
            block, call_effect = await self._call_tool(run, call)
            if call_effect == "park":
                asked = True
                run.parked.append(call.id)
                effect = effect or "park"
                continue  # its result is the requester's reply, filled in on resume
            if block is not None:
                results.append(block)
            if call_effect == "finish":
                effect = "finish"
        if results:
            run.messages.append({"role": "user", "content": results})
        await self._checkpoint(run)
        return effect

    async def _call_tool(
        self, run: _Run, call: ToolUse
    ) -> tuple[dict[str, Any] | None, Literal["finish", "park"] | None]:
        tool = self.tools.get(call.name)
        policy_name = run.order.authority_policy
        policy = self.settings.policies[policy_name]
        started = self.clock()
        arguments = call.arguments if call.arguments is not None else {"raw": call.raw_arguments}
        mcp = origin(tool)
        approver: str | None = None

        async def record(
            allowed: bool, outcome: str, *, error: str | None = None, text: str = ""
        ) -> None:
            run.unrecorded.append(
                ToolCall(
                    order_id=run.number,
                    attempt_id=run.attempt_id,
                    name=call.name,
                    arguments=arguments,
                    allowed=allowed,
                    outcome=outcome,
                    error=error,
                    result_excerpt=text[:RESULT_EXCERPT_CHARS] or None,
                    duration_ms=int((self.clock() - started) * 1000),
                    server=mcp.server if mcp else None,
                    approver=approver,
                )
            )

        reason = denial(call.name, tool, policy_name=policy_name, policy=policy)
        if reason is not None:
            await record(False, "forbidden", error=reason)
            self._count_forbidden(run, call.name, reason)
            return tool_result(call.id, f"Not allowed: {reason}.", is_error=True), None
        assert tool is not None
        if call.error is not None or call.arguments is None:
            message = call.error or "the arguments were not a JSON object"
            await record(True, "malformed", error=message)
            return (
                tool_result(
                    call.id,
                    f"Your arguments for {call.name} could not be used: {message}. Call it again "
                    "with a JSON object that matches the tool's schema.",
                    is_error=True,
                ),
                None,
            )
        if decision(policy_name, policy, tool) == "ask":
            check = getattr(tool, "check", None)
            try:
                if callable(check):
                    check(call.arguments)  # never ask a person about a call that cannot run
                # The request a person answers names a call the checkpoint holds.
                await self._save(run)
                gate = await self._approval(run, call, tool)
            except ToolInputError as exc:
                await record(True, "error", error=str(exc))
                return tool_result(call.id, str(exc), is_error=True), None
            if gate.waiting:
                return None, "park"  # the prompt was written with the request
            if gate.refusal is not None:
                await record(False, "denied", error=gate.refusal)
                self._count_forbidden(run, call.name, gate.refusal)
                return tool_result(call.id, f"Not allowed: {gate.refusal}", is_error=True), None
            approver = gate.approver
        # Counted and shown on the status message, with what the step has not written yet,
        # in one transaction.
        counted = await self._save(
            run,
            count=run.guard.tool_count(
                status=tool.describe(call.arguments),
                coalesce_s=self.settings.engine.status_update_interval_s,
            ),
        )
        if not counted:
            raise run.guard.tool_calls_used_up()
        context = ToolContext(
            order=run.order,
            policy_name=policy_name,
            policy=policy,
            settings=self.settings,
            store=self.store,
            tool_use_id=call.id,
            attempt_id=run.attempt_id,
            remaining_s=run.order.budget.max_wall_clock_s - run.elapsed_ms() / 1000,
        )
        try:
            async with asyncio.timeout(TOOL_TIMEOUT_S):
                result = await tool.run(call.arguments, context)
        except ToolForbidden as exc:
            await record(False, "forbidden", error=str(exc))
            self._count_forbidden(run, call.name, str(exc))
            return tool_result(call.id, f"Not allowed: {exc}", is_error=True), None
        except ToolInputError as exc:
            await record(True, "error", error=str(exc))
            return tool_result(call.id, str(exc), is_error=True), None
        except TimeoutError:
            message = f"{call.name} took longer than {TOOL_TIMEOUT_S:g} s and was stopped"
            await record(True, "timeout", error=message)
            return tool_result(call.id, message, is_error=True), None
        except Exception as exc:
            log.exception("tool failed", extra={"order": run.order.id, "tool": call.name})
            message = f"{call.name} failed: {type(exc).__name__}: {exc}"
            await record(True, "error", error=message)
            return tool_result(call.id, message, is_error=True), None
        await record(True, "error" if result.is_error else "ok", text=result.content)
        if result.park:
            return None, "park"
        content = result.content
        if result.untrusted_source:
            content = fence(content, result.untrusted_source)
        block = tool_result(call.id, content, is_error=result.is_error)
        return block, "finish" if result.finish else None

    async def _web_search(self, run: _Run) -> WebSearchRequest | None:
        """The provider's web search for the next call: within the policy's (and channel's)
        domains, and at most as many searches as the order has tool calls left."""
        row = await self.store.orders.get_row(run.number)
        left = run.order.budget.max_tool_calls - row.tool_calls
        uses = min(self.settings.tools.web_search.max_uses, left)
        if uses <= 0:
            return None
        policy = self.settings.policies[run.order.authority_policy]
        extra = self.settings.channel_defaults(run.order.channel).extra_domains
        domains = list(dict.fromkeys([*policy.domains, *extra]))
        return WebSearchRequest(uses, None if "*" in domains else domains)

    async def _count_searches(self, run: _Run, reply: ModelReply) -> None:
        """The provider's searches in the reply: each a tool call, recorded and counted."""
        for query in reply.searches:
            await self.store.runs.record_tool_call(
                ToolCall(
                    order_id=run.number,
                    attempt_id=run.attempt_id,
                    name="web_search",
                    arguments={"query": query},
                    allowed=True,
                    outcome="ok",
                    duration_ms=0,
                )
            )
            await run.guard.charge_tool_call()

    async def _approval(self, run: _Run, call: ToolUse, tool: Tool) -> _Gate:
        """A call the policy says `ask` for: allowed (by whom), refused, or waiting for a person.

        This call's own answer counts first (asked before and resumed: 'once' is spent here,
        under the grant's own conditional update); then an 'Allow for this order' answer for the
        same tool on this order; then a 'Deny' of the same call (same tool, same arguments)
        stands without asking again. Otherwise the request is created, with its prompt."""
        assert call.arguments is not None
        mcp = origin(tool)
        name, server = (mcp.tool, mcp.server) if mcp else (call.name, None)
        shown = f"{server}.{name}" if server else name
        found = await self.store.approvals.approval_for(run.number, call.id)
        if found is None:
            standing = await self.store.approvals.standing_approval(run.number, tool=name, server=server)
            if standing is not None:
                return _Gate(approver=standing.decided_by)
            digest = CallArguments.of(call.arguments).sha256
            denied = await self.store.approvals.denied_call(
                run.number, tool=name, server=server, arguments_sha256=digest
            )
            if denied is not None:
                return _Gate(
                    refusal=f"<@{denied.decided_by}> denied this call of {shown} for this order; "
                    "do not ask again: work without it and say in the deliverable what it "
                    "would have done"
                )
            if not run.order.channel:
                return _Gate(
                    refusal=f"{shown} needs a person's approval and this order has no thread "
                    "to ask in; work without it"
                )
            policy_name = run.order.authority_policy
            found = await self.store.approvals.request_approval(
                run.number,
                tool_use_id=call.id,
                tool=name,
                server=server,
                arguments=call.arguments,
                reason=why_ask(policy_name, self.settings.policies[policy_name], tool),
                approvers=approvers_of(run.order, self.settings),
                attempt_id=run.attempt_id,
            )
        assert found.id is not None
        if found.decision is None:
            return _Gate(waiting=True)
        if found.decision == "deny":
            return _Gate(
                refusal=f"denied by <@{found.decided_by}>; do not ask again: work without "
                f"{shown} and say in the deliverable what it would have done"
            )
        if found.decision == "once" and not await self.store.approvals.use_one_time_grant(found.id):
            return _Gate(
                refusal=f"the permission to call {shown} once was used already (an "
                "interrupted run may have made the call); call it again to ask anew"
            )
        return _Gate(approver=found.decided_by)

    def _count_forbidden(self, run: _Run, name: str, reason: str) -> None:
        run.forbidden += 1
        limit = self.settings.engine.max_forbidden_tool_calls
        if run.forbidden >= limit:
            raise AuthorityDenied(
                name,
                f"the run asked {run.forbidden} times for something its authority policy "
                f"does not allow (last: {reason})",
            )

    # Resuming

    async def _restore(self, run: _Run) -> None:
        """Rebuild the history from the last checkpoint and settle the interrupted turn."""
        assert run.order.id is not None
        latest = await self.store.runs.latest_checkpoint(run.order.id)
        if latest is not None and latest.checkpoint:
            run.messages = [dict(m) for m in json.loads(json.dumps(latest.checkpoint))]
            run.step = run.first_step = latest.step
        else:
            run.messages = [first_message(run.order)]
        run.forbidden = sum(
            1 for call in await self.store.runs.tool_calls(run.order.id) if not call.allowed
        )
        row = await self.store.orders.get_row(run.order.id)
        inbox = list(row.inbox or [])
        run.inbox_to_consume = len(inbox)
        notes = [inbox_note(item) for item in inbox]
        index = last_assistant(run.messages)
        if index is None:
            run.messages[-1]["content"] = blocks_of(run.messages[-1]["content"]) + notes
            return
        uses = [b for b in run.messages[index]["content"] if b.get("type") == "tool_use"]
        following = run.messages[index + 1] if index + 1 < len(run.messages) else None
        if not uses:
            if following is None:
                run.messages.append({"role": "user", "content": [{"type": "text", "text": NUDGE}]})
                following = run.messages[-1]
            following["content"] = blocks_of(following["content"]) + notes
            return
        done = {
            b["tool_use_id"]: b
            for b in (following["content"] if following else [])
            if isinstance(b, dict) and b.get("type") == "tool_result"
        }
        if any(
            u["name"] == "submit_deliverable"
            and u["id"] in done
            and not done[u["id"]].get("is_error")
            for u in uses
        ):
            assert following is not None and latest is not None
            if latest.outcome != "submitted":
                # Submitted, then cut off before handing it over: hand it over now.
                run.submitted = True
                return
            # Handed over before and now back (rework, or a retry): carry on from here.
            following["content"] = blocks_of(following["content"]) + (
                notes or [{"type": "text", "text": REVISE}]
            )
            return
        missing = [u for u in uses if u["id"] not in done]
        if not missing:
            if following is not None:
                following["content"] = blocks_of(following["content"]) + notes
            return
        replies = [item for item in inbox if item.get("kind") == "reply"]
        results = list(done.values())
        leftover_notes = notes
        for use in missing:
            if use["name"] == "ask_requester" and replies:
                answer = "\n\n".join(str(item.get("text", "")) for item in replies)
                results.append(tool_result(use["id"], f"The requester replied: {answer}"))
                leftover_notes = [inbox_note(i) for i in inbox if i.get("kind") != "reply"]
                replies = []
            else:
                run.pending_calls.append(
                    ToolUse(use["id"], use["name"], use.get("input"), json.dumps(use.get("input")))
                )
        del run.messages[index + 1 :]
        run.pending_results = results + leftover_notes

    async def _read_inbox(self, run: _Run) -> None:
        """Messages the requester left while the run was working go into the next request."""
        if run.inbox_to_consume:
            return
        assert run.order.id is not None
        # The checkpoint just before read it (a message left since is read at the next step).
        inbox, run.inbox_seen = run.inbox_seen, None
        if inbox is None:
            inbox = list((await self.store.orders.get_row(run.order.id)).inbox or [])
        if not inbox:
            return
        last = run.messages[-1]
        if last["role"] != "user":
            run.messages.append({"role": "user", "content": []})
            last = run.messages[-1]
        last["content"] = blocks_of(last["content"]) + [inbox_note(i) for i in inbox]
        run.inbox_to_consume = len(inbox)

    # Endings

    async def _complete(self, run: _Run) -> Outcome:
        """The run handed in its deliverable: check it, then send it to review or back to work."""
        assert run.order.id is not None
        item = (await self.store.runs.deliverables(run.order.id))[-1]
        assert item.id is not None
        checks = run.order.verification.automatic_checks
        verification, note = await self._verify(run, item) if checks else (None, "")
        if verification is not None and not verification.passed:
            row = await self.store.orders.get_row(run.order.id)
            if row.auto_revisions < run.order.verification.max_auto_revisions:
                return await self._revise(run, verification)
        # The deliverable and its review prompt are owed to the thread from the moment the
        # order leaves the run: written with that change, sent by the outbox's deliverer.
        result = OutboxItem(
            "result",
            result_key(run.order.id or "", item.id),
            {
                "content": item.content,
                "summary": item.summary,
                "verdicts": [v.as_dict() for v in verification.verdicts] if verification else None,
                "note": note,
                # Named here, uploaded by the deliverer from the store (the bytes stay there).
                "files": [
                    {"id": f.id, "position": f.position, "name": f.name, "mimetype": f.mimetype,
                     "size": f.size, "sha256": f.sha256}
                    for f in await self.store.runs.deliverable_files(item.id)
                ],
            },
        )
        order = await self.store.queue.finish_run(
            run.order.id,
            self.worker_id,
            Status.VERIFYING if checks else Status.AWAITING_REVIEW,
            reason="deliverable submitted",
            attempt_id=run.attempt_id,
            outcome="submitted",
            elapsed_ms=run.elapsed_ms(),
            outbox=[result],
            # Verifying and awaiting review in one transaction: no crash can stop in between.
            then=(
                Status.AWAITING_REVIEW,
                "verifier",
                "automatic checks passed"
                if verification is not None and verification.passed
                else "sent to the reviewer with the check results",
            )
            if checks
            else None,
        )
        if order is None:
            return await self._lost(run)
        return Outcome("done")

    async def _verify(self, run: _Run, item: Deliverable) -> tuple[VerificationReport | None, str]:
        """The verifier's verdicts (kept on the deliverable, so a resumed run does not pay twice)."""
        assert item.id is not None
        if item.verdicts is not None:
            return VerificationReport([CriterionVerdict.from_dict(v) for v in item.verdicts]), ""
        await self._status(run, "Checking the deliverable against its acceptance criteria")
        try:
            verification = await verify(
                self.router, run.order, item.content, budget=run.guard, attempt_id=run.attempt_id
            )
        except BudgetExceeded as exc:
            return None, f"Not checked automatically: the budget did not cover the check ({exc})."
        except (ProviderRejected, ProviderUnavailable) as exc:
            return None, f"Not checked automatically: the verifier model was unavailable ({exc})."
        await self.store.runs.save_verdicts(
            item.id,
            [v.as_dict() for v in verification.verdicts],
            actor="verifier",
            passed=verification.passed,
        )
        return verification, ""

    async def _revise(self, run: _Run, verification: VerificationReport) -> Outcome:
        """Automatic checks failed and a revision is allowed: back to work with the findings."""
        assert run.order.id is not None
        failed = len(verification.failures)
        # The findings, the revision count and both moves in one transaction, fenced by the lease.
        order = await self.store.queue.finish_run(
            run.order.id,
            self.worker_id,
            Status.VERIFYING,
            reason="deliverable submitted",
            attempt_id=run.attempt_id,
            outcome="submitted",
            elapsed_ms=run.elapsed_ms(),
            note={"kind": "verification", "text": verification.findings()},
            then=(
                Status.QUEUED,
                "verifier",
                f"automatic checks: {failed} criteria not met; revising",
            ),
        )
        if order is None:
            return await self._lost(run)
        await self._status(run, f"Revising: automatic checks found {failed} criteria not met")
        return Outcome("requeued", "revising after automatic checks")

    async def _park(self, run: _Run) -> Outcome:
        assert run.order.id is not None
        questions = _questions(run.order, run.messages)
        order = await self.store.queue.finish_run(
            run.order.id,
            self.worker_id,
            Status.WAITING_FOR_REQUESTER,
            reason="asked the requester a question"
            if questions
            else "waiting for a person to allow a tool call",
            attempt_id=run.attempt_id,
            outcome="parked",
            elapsed_ms=run.elapsed_ms(),
            outbox=questions,
            # An answer that came in before the park (the order was still running) requeues.
            awaiting=run.parked,
        )
        if order is None:
            return await self._lost(run)
        return Outcome("parked")

    async def _stop_for(self, run: _Run, kind: ExceptionKind, message: str) -> Outcome:
        assert run.order.id is not None
        key = exception_key(run.order.id, run.attempt.number)
        order = await self.store.queue.finish_run(
            run.order.id,
            self.worker_id,
            Status.EXCEPTION,
            reason=message,
            attempt_id=run.attempt_id,
            outcome=f"exception:{kind}",
            audit={"kind": kind},
            exception_kind=kind,
            exception_message=message,
            elapsed_ms=run.elapsed_ms(),
            outbox=[exception_notice(key, kind, message)],
        )
        if order is None:
            return await self._lost(run)
        telemetry.RUN_STOPS.labels(kind).inc()
        return Outcome("exception", message)

    async def _database_dropped(self, run: _Run, error: Exception) -> Outcome:
        """The database connection failed mid-run (a restart, a fail-over, backends killed):
        not the run's fault, so it goes back to the queue and resumes from its last checkpoint,
        not counted as a crash. Only `engine.max_attempts` such runs in a row stop the order."""
        assert run.order.id is not None
        problem = f"the database connection failed ({type(error).__name__}: {error})"
        for pause_s in DATABASE_RETRY_PAUSES_S:  # the pool reconnects; give it a moment
            try:
                in_a_row = 1 + await self.store.runs.attempts_in_a_row(run.number, DATABASE_DROPPED)
                if in_a_row >= self.settings.engine.max_attempts:
                    log.error(problem, exc_info=error, extra={"order": run.order.id})
                    message = f"{problem}, in {in_a_row} runs in a row"
                    return await self._stop_for(run, "crashed", message)
                log.warning("%s: back to the queue", problem, extra={"order": run.order.id})
                return await self._requeue(
                    run,
                    "the database connection failed; resuming from the last checkpoint",
                    after_s=DATABASE_BACKOFF_S * 2 ** (in_a_row - 1),
                    outcome=DATABASE_DROPPED,
                )
            except Exception as again:
                if not is_connection_error(again) or pause_s is None:
                    raise
                await asyncio.sleep(pause_s)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _requeue(
        self,
        run: _Run,
        reason: str,
        *,
        outcome: str = "requeued",
        after_s: float = 0.0,
        wait_reason: str | None = None,
        wait_kind: WaitKind | None = None,
        waiting_since: datetime | None = None,
        quota_needed_micro_usd: int | None = None,
    ) -> Outcome:
        assert run.order.id is not None
        changes: dict[str, Any] = {
            "available_after_s": after_s,
            "waiting_since": None,
            "quota_needed_micro_usd": quota_needed_micro_usd,
        }
        if wait_reason is not None:
            changes |= {
                "wait_reason": wait_reason,
                "wait_kind": wait_kind.value if wait_kind else None,
                "waiting_since": waiting_since or utcnow(),
            }
        order = await self.store.queue.finish_run(
            run.order.id,
            self.worker_id,
            Status.QUEUED,
            reason=reason,
            attempt_id=run.attempt_id,
            outcome=outcome,
            elapsed_ms=run.elapsed_ms(),
            # A wait shows its reason (the row's wait_reason); anything else says why it is back.
            step=None if wait_reason is not None else f"Back in the queue: {reason}",
            **changes,
        )
        if order is None:
            return await self._lost(run)
        return Outcome("requeued", reason)

    async def _wait_for_quota(
        self, run: _Run, reason: str, *, needed_micro_usd: int | None = None
    ) -> Outcome:
        """The team's week cannot cover the next call: back off, keeping how long the order has
        been waiting (so `engine.max_quota_wait_s` can fire) and what its next call needs (so
        it is claimed again only once that fits), and tell the thread once."""
        assert run.order.id is not None
        row = await self.store.orders.get_row(run.order.id)
        since = as_utc(row.waiting_since)  # kept by the claim while the order was waiting
        now = utcnow()
        waited = (now - since).total_seconds() if since is not None else 0.0
        limit = self.settings.engine.max_quota_wait_s
        if limit is not None and waited > limit:
            return await self._stop_for(run, "quota", f"it waited too long: {reason}")
        # Doubling back-off: wait as long again as the order has waited so far, within bounds.
        after_s = min(QUOTA_BACKOFF_MAX_S, max(QUOTA_BACKOFF_MIN_S, waited))
        return await self._requeue(
            run,
            reason,
            after_s=after_s,
            wait_reason=reason,
            wait_kind=WaitKind.QUOTA,
            waiting_since=since or now,
            quota_needed_micro_usd=needed_micro_usd,
        )

    async def _cancelled(self, run: _Run) -> Outcome:
        assert run.order.id is not None
        await self.store.queue.end_attempt(run.attempt_id, "cancelled")
        await self.store.ledger.settle_orphaned_calls(run.order.id)
        return Outcome("cancelled")

    async def _saved_then(self, run: _Run, finish: Awaitable[Outcome]) -> Outcome:
        """End a run that stopped mid-step with what the step had not written yet: the calls
        it made are on record, and a reply it paid for is resumed from, not asked again."""
        try:
            await self._save(run)
        except LeaseLost:
            pass  # another worker holds the order: what this attempt did is not its to write
        except Exception as exc:
            log.warning(
                "could not save the stopped run's last step: %s",
                exc,
                extra={"order": run.order.id},
            )
        return await finish

    async def _lost(self, run: _Run) -> Outcome:
        telemetry.LEASES_LOST.inc()
        await self.store.queue.end_attempt(run.attempt_id, "lost")
        return Outcome("lost")

    # Checkpoints and reports

    async def _checkpoint(self, run: _Run) -> None:
        run.unsaved = True
        await self._save(run)

    async def _save(self, run: _Run, *, count: ToolCount | None = None) -> bool:
        """Write what the step has not written yet (its tool calls, its checkpoint) and
        `count`, in one transaction; whether `count` was counted."""
        if not (run.unsaved or run.unrecorded or count):
            return False
        checkpoint = None
        if run.unsaved:
            checkpoint = Checkpoint(
                messages=run.messages,
                step=run.step,
                elapsed_ms=run.elapsed_ms(),
                consumed_inbox=run.inbox_to_consume,
            )
        calls, run.unrecorded = run.unrecorded, []
        saved = await _uncut(
            self.store.runs.save_step(
                run.attempt_id, tool_calls=calls, checkpoint=checkpoint, count=count
            )
        )
        if checkpoint is not None:
            run.unsaved, run.inbox_to_consume = False, 0
            run.inbox_seen = saved.inbox
        return bool(saved.counted)

    async def _status(self, run: _Run, step: str) -> None:
        """Show what the run is doing on its status message (through the outbox, at most one
        update per `engine.status_update_interval_s`). Never breaks the run."""
        try:
            await _uncut(
                self.store.outbox.report_status(
                    run.number, step, coalesce_s=self.settings.engine.status_update_interval_s
                )
            )
        except Exception:
            log.exception("status update not written", extra={"order": run.order.id})


async def _uncut(write: Awaitable[Any]) -> Any:
    """Let a write the run makes between steps finish even if the run is cancelled meanwhile
    (Cancel, shutdown, a lost lease): the run still stops at once, but the transaction ends by
    commit or rollback. On SQLite a transaction cut off mid-way (BEGIN IMMEDIATE waiting for
    the lock) can leave the driver's thread holding the write lock, and every other writer of
    the database waits behind it."""
    return await asyncio.shield(asyncio.ensure_future(write))


def _questions(order: WorkOrder, messages: list[dict[str, Any]]) -> list[OutboxItem]:
    """The question a parked run asked (ask_requester in its last reply), owed to the thread."""
    index = last_assistant(messages)
    if index is None:
        return []
    for block in messages[index]["content"]:
        if isinstance(block, dict) and block.get("name") == "ask_requester":
            text = str((block.get("input") or {}).get("question", "")).strip()
            if text:
                key = question_key(order.id or "", str(block.get("id", "")))
                return [OutboxItem("question", key, {"text": text})]
    return []


def _close(awaitable: Awaitable[Outcome]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()
