"""One TLS context for every model provider client of a process.

Each SDK client otherwise builds its own, loading the system's trust store again: tens of
milliseconds of CPU per client, paid by every worker start, CLI command and test that makes a
model client. An `ssl.SSLContext` is meant to be shared.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def shared_tls_context() -> ssl.SSLContext:
    """Python's default client context (hostnames checked, certificates required, the system
    trust store or the one SSL_CERT_FILE / SSL_CERT_DIR names), built once."""
    return ssl.create_default_context()
