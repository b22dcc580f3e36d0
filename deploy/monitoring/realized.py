"""Realized quality: how well past scores ranked the customers who then churned, per scoring date.

A score of scoring date D is judged by the customer's first outcome known on or after D (the outcomes
table's `as_of`). Each scoring date with at least `monitoring.min_outcomes` judged customers (and
both outcomes among them) gets its ROC AUC (scikit-learn's `roc_auc_score`), set against the
release gate's minimum (`gate.min_auc`). The newest judged date decides the signal: the model's
quality now, not an average with the quality it had months ago.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pandas as pd

from config import EnvConfig
from deploy.core.contract import PROBABILITY
from deploy.monitoring.drift import CROSSED, NOT_ENOUGH_DATA, OK, UNAVAILABLE
from deploy.monitoring.sources import DataContainer, OutcomesUnreadable

NO_OUTCOMES = "no outcomes yet"
SCORE_COLUMNS = ["CustomerId", PROBABILITY, "model_version"]


def realized_quality(env: EnvConfig, container: DataContainer, today: date) -> dict[str, Any]:
    """The signal document: one entry per scoring date in the lookback, and the verdict of the newest judged."""
    thresholds, minimum = env.monitoring, env.gate.min_auc
    base = {"statistic": "roc_auc", "threshold": minimum, "dates": {}}
    try:
        outcomes = container.outcomes()
    except OutcomesUnreadable as exc:
        return {**base, "status": UNAVAILABLE, "reason": str(exc)}
    if outcomes is None or outcomes.empty:
        return {**base, "status": NO_OUTCOMES,
                "reason": f"no outcomes table at {container.outcomes_location} (CustomerId, Exited, as_of)"}
    first = today - timedelta(days=thresholds.outcome_lookback_days)
    dates: dict[str, dict[str, Any]] = {}
    for day in container.score_dates(first, today):
        scores = pd.concat(list(container.scores(day, SCORE_COLUMNS)) or [pd.DataFrame(columns=SCORE_COLUMNS)])
        dates[day.isoformat()] = _judge_date(day, scores, outcomes, thresholds.min_outcomes, minimum)
    judged = [(day, entry) for day, entry in sorted(dates.items()) if entry["status"] in (OK, CROSSED)]
    if not judged:
        reason = "no scoring date has enough customers with an outcome yet" if dates else \
            f"no batch scores in the last {thresholds.outcome_lookback_days} days to judge"
        return {**base, "dates": dates, "status": NOT_ENOUGH_DATA if dates else NO_OUTCOMES, "reason": reason}
    newest_day, newest = judged[-1]
    return {**base, "dates": dates, "status": newest["status"], "value": newest["auc"], "scoring_date": newest_day}


def _judge_date(day: date, scores: pd.DataFrame, outcomes: pd.DataFrame, min_outcomes: int,
                minimum: float) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    known = outcomes[outcomes["as_of"] >= day].sort_values("as_of").drop_duplicates("CustomerId")
    scored = scores.dropna(subset=[PROBABILITY]).drop_duplicates("CustomerId")
    joined = scored.merge(known, on="CustomerId", how="inner")
    versions = sorted({str(version) for version in scored.get("model_version", pd.Series(dtype=str)).dropna()})
    entry: dict[str, Any] = {"scored": len(scored), "with_outcome": len(joined), "model_versions": versions}
    positives = int(joined["Exited"].sum()) if len(joined) else 0
    if len(joined) < min_outcomes or positives in (0, len(joined)):
        return {**entry, "status": NOT_ENOUGH_DATA, "auc": None, "churned": positives}
    auc = float(roc_auc_score(joined["Exited"], joined[PROBABILITY]))
    return {**entry, "status": CROSSED if auc < minimum else OK, "auc": auc, "churned": positives}
