"""Which models a suite runs on: the configured route of its role, or `--route` overrides
(several for one role: a side-by-side)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from workers.config import ModelRef, Role, Route, Settings

EVAL_ROLES: tuple[Role, ...] = ("intake", "verify")


class RouteError(ValueError):
    """A `--route` that cannot be used; the message says why and what would work."""


@dataclass(frozen=True)
class Variant:
    """One route a suite runs on, and the settings that send the role's calls there."""

    role: Role
    label: str
    settings: Settings


def parse_route(text: str) -> tuple[Role, ModelRef]:
    """`intake=anthropic:claude-haiku-4-5` -> ("intake", ModelRef)."""
    role, sep, model = text.partition("=")
    role = role.strip()
    if not sep or role not in EVAL_ROLES:
        raise RouteError(
            f"--route {text!r}: expected ROLE=PROVIDER:MODEL with ROLE one of "
            f"{', '.join(EVAL_ROLES)}, e.g. intake=anthropic:claude-haiku-4-5"
        )
    try:
        ref = Route.model_validate({"primary": model.strip()}).primary
    except ValidationError as exc:
        raise RouteError(f"--route {text!r}: {exc.errors()[0]['msg']}") from None
    return role, ref


def variants(settings: Settings, role: Role, overrides: list[ModelRef]) -> list[Variant]:
    """The routes a suite of `role` runs on: each override alone (no fallback, every workload
    class), or the configured routing when there is none."""
    if not overrides:
        routes = settings.routing[role]
        shown = ", ".join(
            f"{key}: {r.primary}" + (f" (fallback {r.fallback})" if r.fallback else "")
            for key, r in routes.items()
        )
        label = f"configured ({shown})" if len(routes) > 1 else f"configured {_route(routes)}"
        return [Variant(role, label, settings)]
    found = []
    for ref in {str(r): r for r in overrides}.values():
        if ref.model not in settings.prices:
            raise RouteError(
                f"--route {role}={ref}: {ref.model!r} has no entry in prices; add its USD per "
                "million tokens to the configuration so its calls can be charged"
            )
        routing = {**settings.routing, role: {"default": Route(primary=ref)}}
        found.append(Variant(role, str(ref), settings.model_copy(update={"routing": routing})))
    return found


def _route(routes: dict[str, Route]) -> str:
    route = next(iter(routes.values()))
    return str(route.primary) + (f" (fallback {route.fallback})" if route.fallback else "")
