"""Authority enforcement: checked in code on every call, whatever the model says."""

from __future__ import annotations

import ipaddress

from workers.config import AuthorityPolicy
from workers.tools.base import Tool

# A run must always be able to hand in its work.
ALWAYS_GRANTED = frozenset({"submit_deliverable"})


def granted(name: str, policy: AuthorityPolicy) -> bool:
    return name in ALWAYS_GRANTED or name in policy.tools


def denial(
    name: str, tool: Tool | None, *, policy_name: str, policy: AuthorityPolicy
) -> str | None:
    """Why the policy forbids this call, or None if it is allowed."""
    if tool is None:
        return f"there is no tool called {name!r}"
    if not granted(name, policy):
        allowed = ", ".join(sorted(set(policy.tools) | ALWAYS_GRANTED))
        return (
            f"the '{policy_name}' authority policy does not allow {name}; "
            f"the tools this order may use are: {allowed}"
        )
    if tool.authority.network and not policy.domains:
        return f"the '{policy_name}' authority policy grants no web domains"
    return None


def host_allowed(host: str, policy: AuthorityPolicy) -> bool:
    """Whether the policy's domain list covers `host` (an entry covers its subdomains too).

    "*" covers every host; an IP address is only covered by "*" or by itself.
    """
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host.strip("[]"))
        is_ip = True
    except ValueError:
        is_ip = False
    for entry in policy.domains:
        entry = entry.lower().strip().rstrip(".")
        if entry == "*":
            return True
        if is_ip:
            if entry.strip("[]") == host.strip("[]"):
                return True
            continue
        entry = entry.removeprefix("*.")
        if host == entry or host.endswith("." + entry):
            return True
    return False
