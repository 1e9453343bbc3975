"""Public suffixes: names under which anyone can register their own host (`com`, `co.uk`,
`github.io`, `s3.amazonaws.com`). Allowing one "as a domain" would allow every stranger's site
under it, so a person may allow such a host once (that exact host), never with its subdomains.

`is_public_suffix` is the one question the rest of the code asks. It should answer from the
Public Suffix List (ICANN and private sections) through a maintained package; until one is a
dependency it answers from the built-in rules below, which cover every top-level domain (any
single label) and the suffixes most often abused.
"""

from __future__ import annotations

# Second-level registries and shared hosting suffixes from the Public Suffix List.
_KNOWN = frozenset(
    {
        # ICANN second levels
        "co.uk", "org.uk", "ac.uk", "gov.uk", "ltd.uk", "plc.uk", "me.uk", "net.uk",
        "com.au", "net.au", "org.au", "edu.au", "gov.au",
        "co.nz", "org.nz", "co.jp", "ne.jp", "or.jp", "co.kr", "or.kr",
        "com.br", "net.br", "org.br", "com.cn", "net.cn", "org.cn", "com.mx", "com.ar",
        "co.in", "net.in", "org.in", "co.za", "org.za", "com.sg", "com.hk", "com.tw",
        "com.tr", "co.il", "org.il", "com.pl", "co.id", "com.my", "com.ph", "com.vn",
        # Private section: shared hosting where every customer gets a subdomain
        "github.io", "githubusercontent.com", "gitlab.io", "pages.dev", "workers.dev",
        "netlify.app", "vercel.app", "herokuapp.com", "appspot.com", "web.app",
        "firebaseapp.com", "azurewebsites.net", "cloudfront.net", "blogspot.com",
        "s3.amazonaws.com", "elasticbeanstalk.com", "fly.dev", "onrender.com",
        "readthedocs.io", "surge.sh", "glitch.me", "repl.co", "ngrok.io", "ngrok-free.app",
        "trycloudflare.com", "duckdns.org", "no-ip.org", "dyndns.org",
    }
)  # fmt: skip


def is_public_suffix(host: str) -> bool:
    """Whether `host` is itself a public suffix (not merely under one): `github.io` yes,
    `octocat.github.io` no."""
    name = host.lower().strip().rstrip(".").removeprefix("*.")
    if not name:
        return True
    if "." not in name:
        return True  # a top-level domain
    # Regional S3 endpoints: s3.<region>.amazonaws.com and s3-<region>.amazonaws.com.
    labels = name.split(".")
    if len(labels) == 4 and labels[0] == "s3" and labels[2:] == ["amazonaws", "com"]:
        return True
    if len(labels) == 3 and labels[0].startswith("s3-") and labels[1:] == ["amazonaws", "com"]:
        return True
    return name in _KNOWN
