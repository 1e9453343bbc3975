"""Model providers behind one interface: `ModelRouter.complete(role, workload_class, request)`.

`base` holds the neutral request/reply shapes and the `ProviderClient` protocol; `anthropic`
and `openai` implement it; `router` picks the model for a role and workload class, fails over,
enforces the budget and records every call.
"""

from __future__ import annotations

from workers.providers.base import (
    ModelReply,
    ModelRequest,
    ProviderClient,
    ProviderFailure,
    StopReason,
    ToolSpec,
    ToolUse,
    Usage,
    WebSearchRequest,
)
from workers.providers.router import ModelRouter

__all__ = [
    "ModelReply",
    "ModelRequest",
    "ModelRouter",
    "ProviderClient",
    "ProviderFailure",
    "StopReason",
    "ToolSpec",
    "ToolUse",
    "Usage",
    "WebSearchRequest",
]
