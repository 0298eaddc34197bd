"""Benchmarks (see bench/RESULTS.md); helpers the load generators share."""
from __future__ import annotations

import ipaddress
import urllib.parse


def loopback_url(prog: str, what: str, url: str, allow_remote: bool) -> str:
    """``url`` without a trailing slash, or a one-line exit naming ``prog`` when it is not an http(s)
    URL, or not a loopback address while ``allow_remote`` is off (a bench loads what it measures)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"{prog}: {what} {url!r}: expected http://HOST:PORT")
    if not allow_remote:
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback:
            raise SystemExit(f"{prog}: {what} {url}: not a loopback address; this bench loads the server it "
                             f"measures, pass --allow-remote to aim it elsewhere")
    return url.rstrip("/")
