"""Public suffixes: names under which anyone can register their own host (`com`, `co.uk`,
`github.io`, `s3.amazonaws.com`). Allowing one "as a domain" would allow every stranger's site
under it, so a person may allow such a host once (that exact host), never with its subdomains.

`is_public_suffix` is the one question the rest of the code asks. It answers from the Public
Suffix List, ICANN and private sections (where `github.io` and the S3 endpoints live), as bundled
by the `publicsuffixlist` package: no download at run time, refreshed with the lock.
"""

from __future__ import annotations

from functools import cache

from publicsuffixlist import PublicSuffixList


@cache
def _list() -> PublicSuffixList:
    return PublicSuffixList()  # parses the bundled list once, on first use


def is_public_suffix(host: str) -> bool:
    """Whether `host` is itself a public suffix (not merely under one): `github.io` yes,
    `octocat.github.io` no. An unknown single label counts as a top-level domain."""
    name = host.lower().strip().rstrip(".").removeprefix("*.")
    if not name:
        return True
    return bool(_list().is_public(name))
