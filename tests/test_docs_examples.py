"""What README and compose.yaml tell a user to run is what the code accepts."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from workers.config import load_settings

REPO = Path(__file__).resolve().parents[1]


def _yaml_block_after(marker: str) -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(re.escape(marker) + r"\n(.*?)```", readme, re.DOTALL)
    assert match, f"README has no yaml block starting with {marker!r}"
    return match.group(1)


def test_the_local_model_example_routes_every_role_and_class_to_the_local_model() -> None:
    config = yaml.safe_load(_yaml_block_after("# local.yaml"))
    settings = load_settings(
        **config, openai_base_url="http://127.0.0.1:8000/v1", anthropic_api_key=None
    )
    for role in ("intake", "execute", "verify"):
        for workload in ("quick", "standard", "deep"):
            route = settings.route(role, workload)  # type: ignore[arg-type]
            assert route.primary is not None
            assert (route.primary.provider, route.primary.model) == ("openai", "qwen2.5-7b-instruct")
            assert route.fallback is None


def test_compose_runs_postgres_one_bot_and_two_workers_on_one_database() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "bot", "worker", "prometheus"}
    assert services["prometheus"]["profiles"] == ["monitoring"]  # only when asked for
    assert services["bot"]["command"] == ["delegate", "run"]
    assert services["worker"]["command"][:2] == ["delegate", "worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    urls = {services[name]["environment"]["DATABASE_URL"] for name in ("bot", "worker")}
    assert len(urls) == 1 and next(iter(urls)).startswith("postgresql+asyncpg://")
    # The password comes from the environment (.env), the same one the database is given.
    assert ":${POSTGRES_PASSWORD:?" in next(iter(urls))
    assert services["db"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "ports" not in services["bot"] and "ports" not in services["worker"]
    for name in ("bot", "worker"):
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"
        env = services[name]["environment"]
        assert {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"} <= env.keys()
        assert services[name]["image"].startswith("delegate:")
        assert "healthcheck" not in services[name], "the image's HEALTHCHECK asks /healthz"
        [mount] = services[name]["volumes"]
        directory = mount.split(":")[1]
        assert env["DELEGATE_CONFIG"].startswith(directory + "/")
        assert (REPO / mount.split(":")[0] / Path(env["DELEGATE_CONFIG"]).name).exists()
    # Workers answer /healthz and /metrics on the port the image's HEALTHCHECK asks.
    assert services["worker"]["environment"]["DELEGATE_WORKER_PORT"] == "3000"


def test_the_docker_run_line_passes_the_provider_keys() -> None:
    readme = (REPO / "README.md").read_text()
    docker = readme[readme.index("docker run") : readme.index("delegate-data:/data")]
    assert "ANTHROPIC_API_KEY" in docker and "OPENAI_API_KEY" in docker
