"""What a caller may see: another tenant's models, streams and metric series are left out of every
answer unless the caller is an admin (:class:`~eyenet.serving.auth.Identity`)."""
from __future__ import annotations

import re
from typing import Any

from eyenet.serving.auth import Identity


def visible(who: Identity, name: str) -> bool:
    """Whether ``who`` may see model ``name`` (``<tenant>.<group>.<family>``)."""
    return who.sees(name.split(".", 1)[0])


_STATUS_LISTS = ("swaps", "reviews", "retrains")
_STATUS_NAMES = ("switching", "reviewing", "retraining")


def controller_status(status: dict[str, Any], who: Identity) -> dict[str, Any]:
    """The controller's status with only ``who``'s tenant's models (all of them for an admin)."""
    if who.is_admin:
        return status
    out = dict(status)
    for key in ("table", "refused"):
        out[key] = {n: v for n, v in (status.get(key) or {}).items() if visible(who, n)}
    for key in _STATUS_LISTS:
        out[key] = [r for r in status.get(key) or [] if visible(who, str(r.get("name", "")))]
    for key in _STATUS_NAMES:
        out[key] = [n for n in status.get(key) or [] if visible(who, n)]
    out["replicas"] = {r: {**v, "serving": {n: ver for n, ver in v.get("serving", {}).items() if visible(who, n)}}
                       for r, v in (status.get("replicas") or {}).items()}
    return out


_MODEL_LABEL = re.compile(r'model="([^"]*)"')


def metrics_text(text: str, who: Identity) -> str:
    """Prometheus text without the series of other tenants' models (an admin sees all)."""
    if who.is_admin:
        return text
    keep = []
    for line in text.splitlines():
        hit = _MODEL_LABEL.search(line)
        if hit is None or visible(who, hit.group(1)):
            keep.append(line)
    return "\n".join(keep) + "\n"
