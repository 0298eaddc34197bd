"""Promotion, rejection and rollback of model versions: what moves the ``champion`` alias.

The serving side follows the ``champion`` alias of each registered model; the
functions here are the only ones that move it, and each move is gated and
recorded in the audit log (:mod:`eyenet.lifecycle.audit`):

* :func:`review` evaluates the ``challenger`` against the ``champion`` on
  held-out labelled data (:mod:`eyenet.gate`, :mod:`eyenet.lifecycle.holdout`) and either
  promotes it (GATE-PASS, then PROMOTE) or archives it with the reason
  (REJECT). Either way the ``challenger`` alias is removed: the candidate has
  been dealt with.
* :func:`promote` makes a named version champion: gated like a review, or
  forced by an operator (it must still load).
* :func:`rollback` returns ``champion`` to the previous good version: each
  promotion records the champion it replaced (``eyenet.previous_champion``
  tag), and rollback follows that chain past versions that were rolled back or
  archived.

Tags live in MLflow, so any process that reads the registry (the controller
actor, another machine's CLI) sees the same chain.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from eyenet.lifecycle import audit, gate, holdout
from eyenet.core.errors import GateRejectedError, LifecycleError, UnknownNameError
from eyenet.lifecycle.registry import CHALLENGER, CHAMPION, Registry, RegistryError, VersionInfo
from eyenet.core.evaluation import ValidationSeries

#: version tag (``eyenet.previous_champion``) naming the champion a promotion replaced: the chain rollback follows
PREVIOUS = "previous_champion"
#: version tag (``eyenet.gate``) with the gate's key numbers, as JSON
GATE = "gate"
PREVIOUS_TAG, GATE_TAG, STATUS_TAG = audit.TAG + PREVIOUS, audit.TAG + GATE, audit.TAG + "status"


@dataclass
class Outcome:
    """What a review, promote or rollback did: ``action`` is promoted, rejected or rolled-back."""

    name: str
    version: int
    action: str
    reason: str
    champion: int | None  # the champion afterwards
    previous: int | None  # the champion before
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _alias(registry: Registry, name: str, alias: str) -> VersionInfo | None:
    try:
        return registry.version(name, alias=alias)
    except UnknownNameError:
        registry.versions(name)  # raises when the model itself does not exist
        return None


def _drop_challenger(registry: Registry, name: str, version: int) -> None:
    current = _alias(registry, name, CHALLENGER)
    if current is not None and current.version == version:
        registry.delete_alias(name, CHALLENGER)


def _gate(registry: Registry, name: str, version: int, champion: VersionInfo | None, *,
          policy: gate.GatePolicy, validation: Sequence[ValidationSeries] | None) -> gate.Decision:
    """Evaluate ``version`` (and the champion, on the same held-out data) and decide."""
    series = list(validation) if validation is not None else holdout.validation_for(registry, name, version)
    report = gate.evaluate_version(registry, name, version, series, policy)
    champ = None
    if champion is not None and not report.error:
        champ = gate.evaluate_version(registry, name, champion.version, series, policy)
    return gate.decide(report, champ, policy)


def _promote(registry: Registry, name: str, version: int, previous: VersionInfo | None, *, actor: str | None,
             reason: str, metrics: dict[str, float]) -> Outcome:
    _intent(registry, name, version, previous.version if previous else None, "promote", actor, reason)
    registry.set_alias(name, CHAMPION, version)
    # empty when there was no champion: an older link must not survive a fresh start
    audit.set_tags(registry, name, version, {PREVIOUS: str(previous.version) if previous else ""})
    audit.record(registry, audit.PROMOTE, name, version, reason=reason, actor=actor, metrics=metrics,
                 previous=previous.version if previous else None, status=audit.PROMOTED)
    _drop_challenger(registry, name, version)
    return Outcome(name, version, "promoted", reason, version, previous.version if previous else None, metrics)


def _intent(registry: Registry, name: str, version: int, previous: int | None, what: str, actor: str | None,
            reason: str) -> None:
    """The audit record written before ``champion`` moves: if the move fails halfway, the log says
    who meant to do what (the PROMOTE / ROLLBACK after it records the outcome)."""
    audit.record(registry, audit.INTENT, name, version, reason=f"{what} to version {version}"
                 f"{f' from {previous}' if previous is not None else ''}: {reason}", actor=actor,
                 previous=previous, mirror=False)


def _gated(registry: Registry, name: str, version: int, champion: VersionInfo | None, *, actor: str | None,
           policy: gate.GatePolicy, validation: Sequence[ValidationSeries] | None, note: str = "") -> Outcome:
    decision = _gate(registry, name, version, champion, policy=policy, validation=validation)
    reason = f"{decision.reason}{f' ({note})' if note else ''}"
    previous = champion.version if champion else None
    if not decision.passed:
        audit.record(registry, audit.REJECT, name, version, reason=reason, actor=actor, metrics=decision.metrics,
                     previous=previous, status=audit.ARCHIVED)
        _tag_gate(registry, name, version, decision)
        _drop_challenger(registry, name, version)
        return Outcome(name, version, "rejected", reason, previous, previous, decision.metrics)
    audit.record(registry, audit.GATE_PASS, name, version, reason=reason, actor=actor, metrics=decision.metrics,
                 previous=previous, status=audit.PASSED)
    _tag_gate(registry, name, version, decision)
    return _promote(registry, name, version, champion, actor=actor, reason=reason, metrics=decision.metrics)


def _tag_gate(registry: Registry, name: str, version: int, decision: gate.Decision) -> None:
    """The gate's key numbers on the version, for the registry UI."""
    keep = ("nab_standard", "nab_standard_own", "precision", "recall", "nonfinite_fraction", "alarm_rate",
            "latency_ms", "champion.nab_standard", "nab_gain")
    shown = {k: round(decision.metrics[k], 4) for k in keep if k in decision.metrics}
    audit.set_tags(registry, name, version, {GATE: json.dumps(shown)})


# ----------------------------------------------------------------------------------------------
# public


def review(registry: Registry, name: str, *, policy: gate.GatePolicy | None = None,
           validation: Sequence[ValidationSeries] | None = None, actor: str | None = None) -> Outcome:
    """Gate the ``challenger`` against the ``champion``: promote it, or archive it with the reason.

    ``validation``: held-out labelled series; default, the challenger's own
    (:func:`eyenet.lifecycle.holdout.validation_for`). Both versions are scored on the same series.
    """
    challenger = _alias(registry, name, CHALLENGER)
    if challenger is None:
        raise LifecycleError(f"{name} has no challenger to review")
    champion = _alias(registry, name, CHAMPION)
    if champion is not None and champion.version == challenger.version:
        registry.delete_alias(name, CHALLENGER)
        raise LifecycleError(f"{name}: challenger version {challenger.version} is already the champion")
    return _gated(registry, name, challenger.version, champion, actor=actor, policy=policy or gate.GatePolicy(),
                  validation=validation)


def promote(registry: Registry, name: str, version: int | None = None, *, actor: str | None = None,
            reason: str = "", policy: gate.GatePolicy | None = None,
            validation: Sequence[ValidationSeries] | None = None, force: bool = False) -> Outcome:
    """Make ``version`` (default: the challenger) champion.

    Gated like :func:`review` (a rejection archives it and raises
    :class:`GateRejectedError`) unless ``force``: then only loading is checked
    and the audit records that the gate was bypassed, with ``reason``.
    """
    if version is None:
        challenger = _alias(registry, name, CHALLENGER)
        if challenger is None:
            raise LifecycleError(f"{name} has no challenger; name the version to promote")
        version = challenger.version
    target = registry.version(name, version)
    champion = _alias(registry, name, CHAMPION)
    if champion is not None and champion.version == target.version:
        raise LifecycleError(f"{name} version {version} is already the champion")
    if force:
        _must_load(registry, name, version)
        why = f"forced past the gate{f': {reason}' if reason else ''}"
        return _promote(registry, name, version, champion, actor=actor, reason=why, metrics={})
    out = _gated(registry, name, version, champion, actor=actor, policy=policy or gate.GatePolicy(),
                 validation=validation, note=reason)
    if out.action == "rejected":
        raise GateRejectedError(f"{name} version {version} rejected: {out.reason}")
    return out


def rollback(registry: Registry, name: str, *, actor: str | None = None, reason: str = "",
             to_version: int | None = None) -> Outcome:
    """Return ``champion`` to the previous good version (or ``to_version``) and record why."""
    champion = _alias(registry, name, CHAMPION)
    if champion is None:
        raise LifecycleError(f"{name} has no champion to roll back")
    target = registry.version(name, to_version) if to_version is not None else previous_good(registry, name, champion)
    if target.version == champion.version:
        raise LifecycleError(f"{name} version {target.version} is already the champion")
    if target.tags.get(STATUS_TAG) == audit.ARCHIVED:
        raise LifecycleError(
            f"{name} version {target.version} was archived by the gate ({target.tags.get('eyenet.reason', 'no reason')}); "
            "promote it with --force to serve it anyway"
        )
    _must_load(registry, name, target.version)
    why = reason or f"rolled back from version {champion.version}"
    _intent(registry, name, target.version, champion.version, "roll back", actor, why)
    registry.set_alias(name, CHAMPION, target.version)
    ev = audit.record(registry, audit.ROLLBACK, name, target.version, reason=why, actor=actor,
                      previous=champion.version, status=audit.PROMOTED)
    audit.set_tags(registry, name, champion.version, {  # the withdrawn version says why it no longer serves
        "status": audit.ROLLED_BACK, "event": audit.ROLLBACK, "reason": f"rolled back to version {target.version}: {why}",
        "actor": ev.actor, "event_time": ev.iso,
    })
    return Outcome(name, target.version, "rolled-back", why, target.version, champion.version)


def previous_good(registry: Registry, name: str, champion: VersionInfo) -> VersionInfo:
    """The champion before ``champion``, skipping versions since rolled back or archived."""
    seen = {champion.version}
    current = champion
    while True:
        prev = current.tags.get(PREVIOUS_TAG)
        if prev is None or not prev.isdigit() or int(prev) in seen:
            raise LifecycleError(
                f"{name} has no earlier good champion to roll back to from version {champion.version}; "
                "name one with --to"
            )
        seen.add(int(prev))
        try:
            current = registry.version(name, int(prev))
        except UnknownNameError:  # deleted since
            raise LifecycleError(f"{name}: the previous champion, version {prev}, no longer exists; name one with --to") from None
        if current.tags.get(STATUS_TAG) not in (audit.ROLLED_BACK, audit.ARCHIVED):
            return current


def _must_load(registry: Registry, name: str, version: int) -> None:
    try:
        registry.load(name, version=version)
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever keeps it from loading keeps it from serving
        text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise LifecycleError(f"{name} version {version} does not load, so it cannot serve: {text}") from None


def history(registry: Registry, name: str, limit: int | None = None) -> list[audit.Event]:
    """The audit events of ``name`` in order (the model must exist)."""
    registry.versions(name)
    return audit.history(name, limit, registry=registry)
