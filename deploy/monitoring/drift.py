"""Per-feature drift, prediction drift and data quality, streamed chunk by chunk against the reference.

The statistics are scipy's; what is ours is only how they are fed, so that a million logged rows
cost a few hundred kilobytes:

- **numbers**: the training split's deciles cut the axis into bins (repeated cut points merge, so a
  0/1 column gets two bins). Each chunk of current rows adds to the bins' counts (numpy), to a
  bounded uniform sample (the rows with the smallest random keys), and to the null and out-of-range
  counts. Drift is the Jensen-Shannon distance (`scipy.spatial.distance.jensenshannon`, base 2: 0
  same, 1 disjoint) between the reference's and the current bin shares, confirmed by the two-sample
  Kolmogorov-Smirnov test (`scipy.stats.ks_2samp`) on the bounded samples;
- **categories**: counts per category (the reference's, plus any unseen one); the same distance on
  the category shares, confirmed by the chi-square test of the 2 x k table (`scipy.stats.chi2_contingency`).

A distribution drifted when the distance exceeds `monitoring.drift_distance` and the test's p-value is
below `monitoring.drift_p_value`: the distance says the move is large enough to matter (a test alone
flags trivial moves once there are many rows), the test says it is not sampling noise (the distance
alone is biased upward on few rows). Fewer than `monitoring.min_rows` rows is "not enough data".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from config import Monitoring
from deploy.core.contract import CATEGORICAL_FEATURES, NUMERIC_FEATURES, PROBABILITY

SAMPLE_SIZE = 5_000  # rows kept per feature for the KS test, whatever the row count
REFERENCE_QUANTILES = np.linspace(0.1, 0.9, 9)  # decile cut points
SEED = 20_261_201

# A signal's status, in the summary and the JSON.
OK = "ok"
CROSSED = "crossed"
NOT_ENOUGH_DATA = "not enough data"
UNAVAILABLE = "unavailable"


@dataclass
class NumericProfile:
    """One numeric column: the reference's bins, and (as rows stream in) the current counts."""

    name: str
    cuts: np.ndarray
    reference_counts: np.ndarray
    reference_sample: np.ndarray
    minimum: float
    maximum: float
    counts: np.ndarray = field(init=False)
    sample_keys: np.ndarray = field(init=False)
    sample: np.ndarray = field(init=False)
    rows: int = 0
    nulls: int = 0
    out_of_range: int = 0

    def __post_init__(self) -> None:
        self.counts = np.zeros_like(self.reference_counts)
        self.sample_keys = np.empty(0)
        self.sample = np.empty(0)

    @classmethod
    def of(cls, name: str, values: pd.Series, rng: np.random.Generator) -> NumericProfile:
        numbers = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
        cuts = np.unique(np.quantile(numbers, REFERENCE_QUANTILES))
        reference_counts = np.bincount(np.searchsorted(cuts, numbers, side="right"), minlength=len(cuts) + 1)
        sample = numbers if len(numbers) <= SAMPLE_SIZE else rng.choice(numbers, SAMPLE_SIZE, replace=False)
        return cls(name, cuts, reference_counts, sample, float(numbers.min()), float(numbers.max()))

    def add(self, values: pd.Series, rng: np.random.Generator) -> None:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        present = numbers[~np.isnan(numbers)]
        self.rows += len(numbers)
        self.nulls += len(numbers) - len(present)
        self.out_of_range += int(np.count_nonzero((present < self.minimum) | (present > self.maximum)))
        self.counts += np.bincount(np.searchsorted(self.cuts, present, side="right"), minlength=len(self.counts))
        self._keep_sample(present, rng)

    def _keep_sample(self, present: np.ndarray, rng: np.random.Generator) -> None:
        """A uniform sample of everything seen so far: the SAMPLE_SIZE rows with the smallest random keys."""
        keys = np.concatenate([self.sample_keys, rng.random(len(present))])
        values = np.concatenate([self.sample, present])
        if len(keys) > SAMPLE_SIZE:
            kept = np.argpartition(keys, SAMPLE_SIZE)[:SAMPLE_SIZE]
            keys, values = keys[kept], values[kept]
        self.sample_keys, self.sample = keys, values

    def drift(self, thresholds: Monitoring) -> dict[str, Any]:
        from scipy.spatial.distance import jensenshannon
        from scipy.stats import ks_2samp

        judged = int(self.counts.sum())
        document: dict[str, Any] = {
            "kind": "numeric", "statistic": "jensen_shannon", "test": "ks_2samp", "rows": judged,
            "reference_bins": self.reference_counts.tolist(), "current_bins": self.counts.tolist(),
            "bin_edges": self.cuts.tolist(),
        }
        if judged < thresholds.min_rows:
            return {**document, "status": NOT_ENOUGH_DATA, "value": None, "p_value": None}
        distance = float(jensenshannon(self.reference_counts, self.counts, base=2))
        test = ks_2samp(self.reference_sample, self.sample)
        return _judged(document, distance, float(test.pvalue), float(test.statistic), thresholds)

    def quality(self, thresholds: Monitoring) -> dict[str, Any]:
        return _quality(self.rows, {
            "null_share": (self.nulls, thresholds.max_null_share),
            "out_of_range_share": (self.out_of_range, thresholds.max_out_of_range_share),
        }, thresholds, {"training_min": self.minimum, "training_max": self.maximum})


@dataclass
class CategoricalProfile:
    name: str
    reference_counts: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    nulls: int = 0

    @classmethod
    def of(cls, name: str, values: pd.Series) -> CategoricalProfile:
        counts = values.dropna().astype(str).value_counts()
        return cls(name, {str(key): int(count) for key, count in counts.items()})

    def add(self, values: pd.Series) -> None:
        self.rows += len(values)
        present = values.dropna()
        self.nulls += len(values) - len(present)
        for key, count in present.astype(str).value_counts().items():
            self.counts[str(key)] = self.counts.get(str(key), 0) + int(count)

    @property
    def unseen(self) -> dict[str, int]:
        return {key: count for key, count in self.counts.items() if key not in self.reference_counts}

    def drift(self, thresholds: Monitoring) -> dict[str, Any]:
        from scipy.spatial.distance import jensenshannon
        from scipy.stats import chi2_contingency

        categories = sorted(set(self.reference_counts) | set(self.counts))
        reference = np.array([self.reference_counts.get(key, 0) for key in categories])
        current = np.array([self.counts.get(key, 0) for key in categories])
        judged = int(current.sum())
        document: dict[str, Any] = {
            "kind": "categorical", "statistic": "jensen_shannon", "test": "chi2_contingency", "rows": judged,
            "categories": categories, "reference_bins": reference.tolist(), "current_bins": current.tolist(),
        }
        if judged < thresholds.min_rows:
            return {**document, "status": NOT_ENOUGH_DATA, "value": None, "p_value": None}
        distance = float(jensenshannon(reference, current, base=2))
        if len(categories) < 2:  # one category on both sides: nothing can have moved
            return _judged(document, distance, 1.0, 0.0, thresholds)
        test = chi2_contingency(np.vstack([reference, current]))
        return _judged(document, distance, float(test.pvalue), float(test.statistic), thresholds)

    def quality(self, thresholds: Monitoring) -> dict[str, Any]:
        unseen = self.unseen
        return _quality(self.rows, {
            "null_share": (self.nulls, thresholds.max_null_share),
            "unseen_share": (sum(unseen.values()), thresholds.max_unseen_share),
        }, thresholds, {"unseen": dict(sorted(unseen.items(), key=lambda item: -item[1])[:10])})


Profile = NumericProfile | CategoricalProfile


def _judged(document: dict[str, Any], distance: float, p_value: float, test_statistic: float,
            thresholds: Monitoring) -> dict[str, Any]:
    crossed = distance > thresholds.drift_distance and p_value < thresholds.drift_p_value
    return {**document, "status": CROSSED if crossed else OK, "value": distance, "p_value": p_value,
            "test_statistic": test_statistic, "threshold": thresholds.drift_distance}


def _quality(rows: int, shares: dict[str, tuple[int, float]], thresholds: Monitoring,
             extra: dict[str, Any]) -> dict[str, Any]:
    if rows < thresholds.min_rows:
        return {"status": NOT_ENOUGH_DATA, "rows": rows, **extra}
    measured = {name: count / rows for name, (count, _) in shares.items()}
    crossed = [name for name, (_, limit) in shares.items() if measured[name] > limit]
    return {
        "status": CROSSED if crossed else OK, "rows": rows, **measured, "crossed": crossed,
        "thresholds": {name: limit for name, (_, limit) in shares.items()}, **extra,
    }


class FeatureProfiles:
    """Every model feature's profile: built from the reference, then fed the current rows chunk by chunk."""

    def __init__(self, reference: pd.DataFrame, seed: int = SEED):
        self._rng = np.random.default_rng(seed)
        self.profiles: dict[str, Profile] = {
            **{name: CategoricalProfile.of(name, reference[name]) for name in CATEGORICAL_FEATURES},
            **{name: NumericProfile.of(name, reference[name], self._rng) for name in NUMERIC_FEATURES},
        }

    def add(self, rows: pd.DataFrame) -> None:
        if rows.empty:
            return
        for name, profile in self.profiles.items():
            column = rows[name] if name in rows.columns else pd.Series([None] * len(rows), dtype=object)
            if isinstance(profile, NumericProfile):
                profile.add(column, self._rng)
            else:
                profile.add(column)

    @property
    def rows(self) -> int:
        return max((profile.rows for profile in self.profiles.values()), default=0)

    def drift(self, thresholds: Monitoring) -> dict[str, dict[str, Any]]:
        return {name: profile.drift(thresholds) for name, profile in self.profiles.items()}

    def quality(self, thresholds: Monitoring) -> dict[str, dict[str, Any]]:
        return {name: profile.quality(thresholds) for name, profile in self.profiles.items()}


class PredictionProfile:
    """The churn probabilities: the reference model's on its training split, against those answered now.

    The reference side costs loading the model (seconds), so `reference` is called only once current
    probabilities arrive: a model that answers bare labels, or a window without answers, loads nothing."""

    def __init__(self, reference: Callable[[], np.ndarray | None], seed: int = SEED):
        self._rng = np.random.default_rng(seed + 1)
        self._reference = reference
        self._loaded = False
        self.profile: NumericProfile | None = None
        self.labels_only = 0  # answers that were bare labels

    def add(self, probabilities: list[float] | np.ndarray, labels_only: int = 0) -> None:
        self.labels_only += labels_only
        if not len(probabilities):
            return
        if not self._loaded:
            self._loaded = True
            found = self._reference()
            if found is not None:
                self.profile = NumericProfile.of(PROBABILITY, pd.Series(found), self._rng)
        if self.profile is not None:
            self.profile.add(pd.Series(np.asarray(probabilities, dtype=float)), self._rng)

    def drift(self, thresholds: Monitoring) -> dict[str, Any]:
        labels = ("the served model answers labels, not probabilities; prediction drift needs churn_probability "
                  "(models trained with the scoring contract answer it)")
        if self.profile is None:
            if self._loaded or self.labels_only:
                return {"status": UNAVAILABLE, "statistic": "jensen_shannon", "value": None, "rows": 0,
                        "reason": labels}
            return {"status": NOT_ENOUGH_DATA, "statistic": "jensen_shannon", "value": None, "rows": 0,
                    "reason": "no churn probabilities answered in the window"}
        document = self.profile.drift(thresholds)
        if document["status"] == NOT_ENOUGH_DATA and self.labels_only:
            document["reason"] = f"{self.labels_only} answers were bare labels; {labels}"
        return document
