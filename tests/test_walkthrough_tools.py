"""README's "Giving runs tools": the example SQLite MCP server, and the churn one-pager walk-through
run end to end (console, worker, show) with README's own configuration and a scripted model."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sqlite3
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import yaml

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI, Reply
from tests.support.cli import delegate
from tests.support.databases import Database
from tests.support.processes import spawn_worker, stop_worker, worker_env
from tests.support.settings import FAST_ENGINE
from tests.support.waiting import PROCESS_START_S, eventually
from tests.test_docs_examples import REPO, _yaml_block_after
from workers.config import McpServerSettings
from workers.store import Store
from workers.tools.mcp import McpServers, McpTool
from workers.workorder import Status

EXAMPLE = REPO / "examples" / "mcp_sqlite"
LOCAL_MODEL = "qwen2.5-7b-instruct"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"mcp_sqlite_{name}", EXAMPLE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


example = _load("server")
make_db = _load("make_db").make_db


@pytest.fixture
def churn_db(tmp_path: Path) -> Path:
    path = tmp_path / "churn.db"
    make_db(path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def readme_config() -> dict[str, Any]:
    """README's local.yaml: the block of *Trying Delegate without Slack* and its continuation."""
    config = yaml.safe_load(_yaml_block_after("# local.yaml"))
    continued = yaml.safe_load(_yaml_block_after("# local.yaml, continued"))
    assert not config.keys() & continued.keys()
    return {**config, **continued}


def quarter_figures(db: Path, starts_on: str, ends_on: str) -> dict[str, float]:
    """A quarter's churn, computed here from the subscriptions, not through the server or its
    quarterly_churn view."""
    rows = sqlite3.connect(db).execute(
        "SELECT mrr_usd, cancelled_on FROM subscriptions WHERE started_on < ? "
        "AND (cancelled_on IS NULL OR cancelled_on >= ?)",
        (starts_on, starts_on),
    )
    active = churned = 0
    mrr = churned_mrr = 0.0
    for mrr_usd, cancelled_on in rows:
        active += 1
        mrr += mrr_usd
        if cancelled_on is not None and cancelled_on < ends_on:
            churned += 1
            churned_mrr += mrr_usd
    return {
        "active": active,
        "churned": churned,
        "logo_pct": 100 * churned / active,
        "mrr": mrr,
        "churned_mrr": churned_mrr,
        "revenue_pct": 100 * churned_mrr / mrr,
    }


# ---------------------------------------------------------------- the example server itself


def test_read_query_refuses_to_change_data_three_ways(churn_db: Path) -> None:
    warehouse = example.Warehouse(churn_db)
    before = digest(churn_db)
    with pytest.raises(example.ToolError, match="not DELETE; use write_query"):
        warehouse.read_query("DELETE FROM subscriptions")
    # A WITH that ends in a DELETE passes the first-word check; SQLite's authorizer stops it.
    with pytest.raises(example.ToolError, match="may only read"):
        warehouse.read_query("WITH x AS (SELECT 1) DELETE FROM subscriptions")
    with pytest.raises(example.ToolError, match="may only read"):
        warehouse.read_query("WITH x AS (SELECT 1) INSERT INTO meta SELECT 'k', 'v' FROM x")
    assert digest(churn_db) == before


def test_read_query_reads(churn_db: Path) -> None:
    warehouse = example.Warehouse(churn_db)
    result = json.loads(warehouse.read_query("SELECT count(*) AS n FROM subscriptions"))
    assert result == {"columns": ["n"], "rows": [[1800]], "row_count": 1, "truncated": False}


def test_the_read_connection_is_read_only_even_past_the_checks(churn_db: Path) -> None:
    warehouse = example.Warehouse(churn_db)
    with (
        warehouse._connect(writable=False) as db,
        pytest.raises(sqlite3.OperationalError, match="readonly"),
    ):
        db.execute("DELETE FROM subscriptions")
    assert sqlite3.connect(churn_db).execute("SELECT count(*) FROM subscriptions").fetchone() == (
        1800,
    )


def test_results_are_capped_in_rows_size_and_time(churn_db: Path) -> None:
    rows = example.Warehouse(churn_db, example.Limits(max_rows=5))
    result = json.loads(rows.read_query("SELECT * FROM subscriptions"))
    assert result["row_count"] == 5 and len(result["rows"]) == 5 and result["truncated"]
    assert "only the first 5 rows" in result["note"]

    small = example.Warehouse(churn_db, example.Limits(max_chars=1_000))
    text = small.read_query("SELECT * FROM subscriptions")
    result = json.loads(text)
    assert len(text) <= 1_000 and result["truncated"] and 0 < result["row_count"] < 200
    assert "fit in 1000 characters" in result["note"]

    slow = example.Warehouse(churn_db, example.Limits(timeout_s=0.2))
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    )
    with pytest.raises(example.ToolError, match=re.escape("ran longer than 0.2 s and was stopped")):
        slow.read_query(endless)


def test_bad_sql_and_bad_names_are_clear_errors(churn_db: Path) -> None:
    warehouse = example.Warehouse(churn_db)
    with pytest.raises(example.ToolError, match="SQLite error: no such table: churn"):
        warehouse.read_query("SELECT * FROM churn")
    with pytest.raises(example.ToolError, match='SQLite error: near "FORM": syntax error'):
        warehouse.read_query("SELECT * FORM subscriptions")
    with pytest.raises(example.ToolError, match="one statement at a time"):
        warehouse.read_query("SELECT 1; SELECT 2")
    with pytest.raises(example.ToolError, match="no table or view called churn"):
        warehouse.describe_table("churn")
    with pytest.raises(example.ToolError, match="not a table name"):
        warehouse.describe_table('x"; DROP TABLE meta; --')
    with pytest.raises(example.ToolError, match=re.escape("not SELECT (use read_query)")):
        warehouse.write_query("SELECT 1")
    with pytest.raises(example.ToolError, match="not DROP"):
        warehouse.write_query("DROP TABLE meta")


def test_write_query_and_drop_table_change_the_file(churn_db: Path) -> None:
    warehouse = example.Warehouse(churn_db)
    done = json.loads(warehouse.write_query("DELETE FROM meta WHERE key = 'currency'"))
    assert done == {"rows_affected": 1}
    assert json.loads(warehouse.drop_table("quarters")) == {"dropped": "quarters"}
    with pytest.raises(example.ToolError, match="quarterly_churn is a view"):
        warehouse.drop_table("quarterly_churn")


def test_a_missing_database_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        example.main(["--db", str(tmp_path / "nope.db")])
    assert exited.value.code == 2
    assert not (tmp_path / "nope.db").exists()
    make_db(tmp_path / "x.db")
    with pytest.raises(FileExistsError, match="already exists"):
        make_db(tmp_path / "x.db")


async def test_over_stdio_through_delegates_wrapper(churn_db: Path) -> None:
    """README's server entry, through the MCP tool wrapper the worker uses: the read-only tools
    are believed read-only (the server is trusted), the writing ones are destructive, a DELETE
    sent to read_query is a tool error the model reads, and the file is unchanged."""
    entry = readme_config()["mcp_servers"]["warehouse"]
    assert entry["command"] == ["python", "examples/mcp_sqlite/server.py", "--db", "churn.db"]
    command = [sys.executable, *entry["command"][1:3], str(churn_db)]
    configured = {"warehouse": McpServerSettings(**{**entry, "command": command, "cwd": str(REPO)})}
    source = McpServers(
        SimpleNamespace(mcp_servers=configured, secret_values=list)  # type: ignore[arg-type]
    )
    before = digest(churn_db)
    await source.start()
    try:
        tools: dict[str, McpTool] = {tool.grant_name: tool for tool in source.tools()}
        assert set(tools) == {
            f"warehouse.{name}"
            for name in ("list_tables", "describe_table", "read_query", "write_query", "drop_table")
        }
        for name in ("list_tables", "describe_table", "read_query"):
            assert tools[f"warehouse.{name}"].origin.believed_read_only
        for name in ("write_query", "drop_table"):
            origin = tools[f"warehouse.{name}"].origin
            assert origin.destructive and not origin.believed_read_only
        ctx = SimpleNamespace(remaining_s=30.0)
        read = tools["warehouse.read_query"]
        result = await read.run({"query": "DELETE FROM subscriptions"}, ctx)  # type: ignore[arg-type]
        assert result.is_error and "not DELETE; use write_query" in result.content
        result = await read.run({"query": "SELECT nope FROM meta"}, ctx)  # type: ignore[arg-type]
        assert result.is_error and "SQLite error: no such column: nope" in result.content
        result = await read.run(
            {"query": "SELECT value FROM meta WHERE key = 'data_as_of'"},
            ctx,  # type: ignore[arg-type]
        )
        assert not result.is_error and json.loads(result.content)["rows"] == [["2026-09-30"]]
    finally:
        await source.close()
    assert digest(churn_db) == before


# ---------------------------------------------------------------- the walk-through


def _intake_draft() -> Reply:
    return Reply.tool(
        "intake_decision",
        {
            "kind": "draft",
            "draft": {
                "title": "Churn one-pager, last quarter",
                "goal": "Pull last quarter's churn numbers from the warehouse into a one-pager.",
                "deliverable": "A one-page Markdown summary of last quarter's churn.",
                "acceptance_criteria": [
                    "Gives logo and revenue churn for the last complete quarter",
                    "Figures come from the warehouse",
                    "Fits on one page",
                ],
                "workload_class": "standard",
                "authority_policy": "analytics",
                "reviewers": [],
                "deadline": None,
                "open_points": [],
            },
        },
    )


def _tool_messages(body: dict[str, Any]) -> list[str]:
    return [str(m.get("content")) for m in body["messages"] if m.get("role") == "tool"]


def _one_pager(body: dict[str, Any]) -> Reply:
    """What the model writes from what read_query returned (the first tool result)."""
    fenced = _tool_messages(body)[0]
    result = json.loads(fenced[fenced.index("{") : fenced.rindex("}") + 1])
    last, before = (dict(zip(result["columns"], row, strict=True)) for row in result["rows"])
    page = "\n".join(
        [
            f"# Churn in {last['quarter']}",
            f"- Logo churn: {last['logo_churn_pct']:.2f}% ({last['churned']} of "
            f"{last['active_at_start']:,} subscriptions), {before['logo_churn_pct']:.2f}% in "
            f"{before['quarter']}",
            f"- Revenue churn: {last['revenue_churn_pct']:.2f}% (${last['churned_mrr_usd']:,.0f} "
            f"of ${last['mrr_at_start_usd']:,.0f} MRR)",
        ]
    )
    return Reply.tool("submit_deliverable", {"content": page, "summary": "Churn one-pager"})


def _all_met() -> Reply:
    return Reply.tool(
        "record_verdicts",
        {"verdicts": [{"index": i, "passed": True, "reason": "ok"} for i in (1, 2, 3)]},
    )


async def _console(env: dict[str, str], stdin: str) -> tuple[int, str, str]:
    return await delegate("console", "--user", "me", env=env, stdin=stdin)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_the_churn_one_pager_walk_through(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    churn_db: Path,
) -> None:
    config = readme_config()
    warehouse = config["mcp_servers"]["warehouse"]
    # The two things that differ from a checkout: this interpreter for `python` (a test runs
    # without the venv on PATH) and the test's own copy of churn.db.
    assert warehouse["command"][0] == "python" and warehouse["command"][-1] == "churn.db"
    warehouse["command"] = [sys.executable, *warehouse["command"][1:-1], str(churn_db)]
    config["engine"] = FAST_ENGINE  # the worker polls the queue quickly
    env = worker_env(database, fake_anthropic, fake_openai, tmp_path, extra_config=config)
    before = digest(churn_db)
    fake_openai.models = [LOCAL_MODEL]  # what the local server's /v1/models lists

    fake_openai.script(
        _intake_draft(),
        Reply.tool(
            "warehouse__read_query",
            {"query": "SELECT * FROM quarterly_churn ORDER BY quarter DESC LIMIT 2"},
        ),
        Reply.tool(
            "warehouse__write_query", {"query": "INSERT INTO meta VALUES ('one_pager', 'done')"}
        ),
        _one_pager,
        _all_met(),
    )
    code, out, err = await _console(
        env, "pull last quarter's churn numbers into a one-pager\nyes\n"
    )
    assert code == 0, err
    assert "analytics" in out
    order_id = out.strip().splitlines()[-1].removeprefix("Confirmed ")

    store = Store.from_url(database.url)
    worker = await spawn_worker(env, tmp_path, worker_id="walk")
    try:

        async def in_review() -> bool:
            assert worker.returncode is None, (tmp_path / "walk.log").read_text()
            return (await store.orders.get_order(order_id)).status is Status.AWAITING_REVIEW

        await eventually(in_review, timeout_s=PROCESS_START_S)
        code, shown, _ = await delegate("show", order_id, env=env)
        assert code == 0 and "State:        awaiting review" in shown
        calls = await store.runs.tool_calls(order_id)
    finally:
        await stop_worker(worker)
        await store.close()

    # The model was offered the warehouse's tools as the policy grants them: drop_table is
    # denied, so never offered.
    [execute, *_] = [r for r in fake_openai.requests if "submit_deliverable" in str(r["tools"])]
    offered = {tool["function"]["name"] for tool in execute["tools"]}
    assert offered == {
        "read_thread",
        "ask_requester",
        "submit_deliverable",
        "warehouse__list_tables",
        "warehouse__describe_table",
        "warehouse__read_query",
        "warehouse__write_query",
    }
    # The figures in the one-pager are the warehouse's, computed here from the rows.
    q3 = quarter_figures(churn_db, "2026-07-01", "2026-10-01")
    q2 = quarter_figures(churn_db, "2026-04-01", "2026-07-01")
    assert "# Churn in 2026-Q3" in shown
    assert (
        f"- Logo churn: {q3['logo_pct']:.2f}% ({q3['churned']} of {q3['active']:,} "
        f"subscriptions), {q2['logo_pct']:.2f}% in 2026-Q2"
    ) in shown
    assert (
        f"- Revenue churn: {q3['revenue_pct']:.2f}% (${q3['churned_mrr']:,.0f} of "
        f"${q3['mrr']:,.0f} MRR)"
    ) in shown
    # write_query is `ask`, and a console order has no thread to ask in: it was refused with
    # the reason, never run, and the warehouse is unchanged.
    refused = _tool_messages(fake_openai.requests[-2])[1]
    assert "needs a person's approval and this order has no thread to ask in" in refused
    assert [(c.name, c.allowed, c.outcome) for c in calls] == [
        ("warehouse__read_query", True, "ok"),
        ("warehouse__write_query", False, "denied"),
        ("submit_deliverable", True, "ok"),
    ]
    assert digest(churn_db) == before
