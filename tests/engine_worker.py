"""A worker pool in its own process, for the crash and multi-process tests.

    python -m tests.engine_worker --concurrency N --worker-id NAME

Configured like `delegate worker` (environment and DELEGATE_CONFIG). Progress goes to Slack
through the front door's reporter when SLACK_BOT_TOKEN is set.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from workers.config import load_settings
from workers.db import create_engine
from workers.progress import ProgressReporter
from workers.runtime import run_worker
from workers.store import Store


async def _main(concurrency: int, worker_id: str) -> None:
    settings = load_settings()
    store = Store(create_engine(settings.database_url))
    reporter: ProgressReporter | None = None
    if settings.slack_bot_token is not None:
        from bot.reporter import SlackReporter
        from bot.slack_client import make_slack_client

        reporter = SlackReporter(store=store, client=make_slack_client(settings))
    try:
        await run_worker(
            settings, concurrency=concurrency, reporter=reporter, store=store, worker_id=worker_id
        )
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--worker-id", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"[{args.worker_id}] %(levelname)s %(message)s")
    asyncio.run(_main(args.concurrency, args.worker_id))


if __name__ == "__main__":
    main()
