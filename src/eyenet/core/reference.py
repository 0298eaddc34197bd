"""What a model version was trained on, per feature: the reference its drift is measured against.

Every registered version records a :class:`DriftReference` (see
:mod:`eyenet.monitoring.drift` for the tests that compare live data with it):
for each feature (the input ``value``, the ``calibrated`` score and the final
``score``) a compact, JSON-safe summary of its training distribution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from eyenet.core.errors import ArtifactError, InvalidParameterError, NotEnoughDataError

#: the features a model's reference holds, in :class:`~eyenet.core.model.Scores` terms
FEATURES: tuple[str, ...] = ("value", "calibrated", "score")
#: the tests a feature is checked with (the ``test`` label of ``eyenet_drift_score``)
TESTS: tuple[str, ...] = ("psi", "ks", "tail")
PSI_EPSILON = 1e-4
FORMAT = 1


def _finite(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


@dataclass(frozen=True)
class Reference:
    """The training distribution of one feature: quantile bins with their counts, a KS sketch, a tail share."""

    edges: np.ndarray  # interior bin edges, increasing; bin i is (edges[i-1], edges[i]]
    counts: np.ndarray  # reference points per bin, len(edges) + 1
    sketch: np.ndarray  # sorted quantiles of the reference, the sample KS compares with
    tail_edge: float  # the reference's tail quantile
    tail_rate: float  # share of reference points above tail_edge

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def from_values(cls, values: Any, *, bins: int = 10, sketch_size: int = 1000,
                    tail_quantile: float = 0.95) -> Reference:
        """Summarise a training series (non-finite values, such as not-ready scores, are left out)."""
        if bins < 2 or sketch_size < 10 or not 0.5 <= tail_quantile < 1:
            raise InvalidParameterError(
                f"bins={bins} (>= 2), sketch_size={sketch_size} (>= 10), tail_quantile={tail_quantile} ([0.5, 1))")
        x = _finite(values)
        if len(x) < 2 * bins:
            raise NotEnoughDataError(f"a drift reference needs at least {2 * bins} finite values, got {len(x)}")
        edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
        m = min(len(x), sketch_size)
        tail_edge = float(np.quantile(x, tail_quantile))
        return cls(
            edges=edges,
            counts=_bin_counts(edges, x),
            sketch=np.quantile(x, (np.arange(m) + 0.5) / m),
            tail_edge=tail_edge,
            tail_rate=float((x > tail_edge).mean()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges.tolist(), "counts": self.counts.tolist(), "sketch": self.sketch.tolist(),
                "tail_edge": self.tail_edge, "tail_rate": self.tail_rate}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        ref = cls(edges=np.asarray(d["edges"], dtype=float), counts=np.asarray(d["counts"], dtype=np.int64),
                  sketch=np.asarray(d["sketch"], dtype=float), tail_edge=float(d["tail_edge"]),
                  tail_rate=float(d["tail_rate"]))
        if len(ref.counts) != len(ref.edges) + 1 or ref.n < 1 or not len(ref.sketch) \
                or np.any(np.diff(ref.edges) <= 0) or not np.isfinite(ref.sketch).all():
            raise ValueError(f"{len(ref.edges)} edges, {len(ref.counts)} counts, {len(ref.sketch)} sketch points")
        return ref

    # -- tests ---------------------------------------------------------------------------------
    def psi(self, x: np.ndarray) -> float:
        """Population stability index of ``x`` against the reference bins."""
        p = np.maximum(_bin_counts(self.edges, x) / len(x), PSI_EPSILON)
        q = np.maximum(self.counts / self.n, PSI_EPSILON)
        return float(np.sum((p - q) * np.log(p / q)))

    def ks(self, x: np.ndarray) -> tuple[float, float]:
        """KS statistic and p-value of ``x`` against the reference sketch."""
        r = stats.ks_2samp(x, self.sketch)
        return float(r.statistic), float(r.pvalue)

    def tail(self, x: np.ndarray) -> tuple[float, float]:
        """Share of ``x`` above the reference's tail edge, and the binomial p-value of that many or more."""
        k = int((x > self.tail_edge).sum())
        # a reference with nothing above its edge (a bounded, saturated score) still allows rare exceedances
        p0 = max(self.tail_rate, 0.5 / self.n)
        return k / len(x), float(stats.binomtest(k, len(x), p0, alternative="greater").pvalue)


def _bin_counts(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)


@dataclass(frozen=True)
class DriftReference:
    """What one model version was trained on, per feature: the reference every drift test compares with."""

    features: dict[str, Reference]

    @classmethod
    def from_model(cls, model: Any, values: Any, **kw: Any) -> DriftReference:
        """The reference of a fitted :class:`~eyenet.core.model.AnomalyModel` from (part of) its training values:
        the values themselves and the model's scores on them, from a fresh stream. A feature with too
        few finite values (scores of a series shorter than the model's history) is left out."""
        x = _finite(values)
        s = model.score(x)
        features = {}
        for name, v in (("value", x), ("calibrated", s.calibrated), ("score", s.score)):
            try:
                features[name] = Reference.from_values(v, **kw)
            except NotEnoughDataError:
                continue
        return cls(features)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "features": {k: r.to_dict() for k, r in self.features.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, what: str = "drift reference") -> DriftReference:
        try:
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {FORMAT}")
            return cls({str(k): Reference.from_dict(r) for k, r in d["features"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{what}: unreadable ({type(exc).__name__}: {exc})") from None
