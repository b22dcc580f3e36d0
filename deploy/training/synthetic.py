"""A deterministic stand-in for the public `Churn_Modelling.csv`: same columns, similar marginals, a plausible signal.

The real table is not committed. This one drives the offline mode and the tests: the same seed
and row count always give the same bytes. Churn rises with age (peaking in the fifties), in
Germany, for inactive members, for women, and sharply with 3-4 products, as in the real table;
about 20% of customers churn.

`drift` (0 to 1, default 0) moves the customer base the way a bank's does when it grows into a new
market: at `drift=1` a third of the customers come from Italy (a country the table never had, its
churn like Spain's) and every customer is 8 years older. 0 gives exactly the undrifted table; the
demo and the monitoring tests use 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deploy.core.contract import COLUMNS, LABEL

DEFAULT_ROWS = 10_000
DEFAULT_SEED = 20_261_126
CHURN_RATE = 0.204  # the real table's share of Exited = 1
NEW_MARKET = "Italy"  # where the drifted customer base grows
NEW_MARKET_SHARE = 1 / 3  # of the customers at drift=1
AGE_SHIFT_YEARS = 8  # every customer older at drift=1

SURNAMES = (
    "Hargrave", "Hill", "Onio", "Boni", "Mitchell", "Chu", "Bartlett", "Obinna", "He", "Ikechukwu", "Bearce", "Andrews",
    "Kay", "Chin", "Scott", "Goforth", "Romeo", "Henderson", "Muldrow", "Hao", "McDonald", "Dellucci", "Gerasimov",
    "Mosman", "Yen", "Maclean", "Young", "Nebechi", "McWilliams", "Lucciano", "Azikiwe", "Odinakachukwu", "Sanderson",
    "Maggard", "Clements", "Lombardo", "Watson", "Lorenzo", "Ferri", "Fang", "Ndukaku", "Lu", "Ross", "Ogbonna",
)


def generate(rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED, drift: float = 0.0) -> pd.DataFrame:
    """`rows` synthetic customers with exactly the columns of Churn_Modelling.csv, in its order.
    `drift` (0-1) grows a new market and ages the customers (see the module docstring)."""
    if rows < 1:
        raise ValueError(f"rows must be positive, not {rows}")
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be between 0 and 1, not {drift}")
    rng = np.random.default_rng(seed)
    geography = rng.choice(["France", "Germany", "Spain"], size=rows, p=[0.50, 0.25, 0.25])
    gender = rng.choice(["Male", "Female"], size=rows, p=[0.55, 0.45])
    age = np.clip(np.round(18 + rng.gamma(shape=4.0, scale=5.3, size=rows)), 18, 92).astype(int)
    if drift:  # drawn from a generator of its own, so drift=0 leaves every other column's draws unchanged
        shift = np.random.default_rng([seed, 1])
        geography = np.where(shift.random(rows) < NEW_MARKET_SHARE * drift, NEW_MARKET, geography)
        age = np.clip(age + round(AGE_SHIFT_YEARS * drift), 18, 92)
    tenure = rng.integers(0, 11, size=rows)
    # A third of customers hold no balance; German customers almost always hold one.
    zero_balance = rng.random(rows) < np.where(geography == "Germany", 0.02, 0.48)
    balance = np.where(zero_balance, 0.0, np.round(np.clip(rng.normal(119_800, 30_000, rows), 3_700, 250_900), 2))
    products = rng.choice([1, 2, 3, 4], size=rows, p=[0.508, 0.459, 0.027, 0.006])
    has_card = (rng.random(rows) < 0.705).astype(int)
    active = (rng.random(rows) < 0.515).astype(int)
    credit = np.clip(np.round(rng.normal(650, 96.7, rows)), 350, 850).astype(int)
    salary = np.round(rng.uniform(11.58, 199_992.48, rows), 2)

    logit = (
        0.9 * np.exp(-(((age - 55.0) / 11.0) ** 2)) * 3.0  # churn peaks among customers in their fifties
        + 0.045 * (age - 38)
        + 0.75 * (geography == "Germany")
        + 0.5 * (gender == "Female")
        - 0.9 * active
        + np.select([products == 2, products == 3, products == 4], [-1.1, 2.4, 4.0], 0.0)
        + 0.25 * (balance > 0)
        - 0.0008 * (credit - 650)
        + rng.normal(0.0, 0.3, rows)  # what the columns cannot explain
    )
    exited = (rng.random(rows) < _sigmoid(logit + _intercept_for(logit, CHURN_RATE))).astype(int)

    frame = pd.DataFrame(
        {
            "RowNumber": np.arange(1, rows + 1),
            "CustomerId": 15_565_701 + rng.permutation(rows * 10)[:rows],
            "Surname": rng.choice(SURNAMES, size=rows),
            "CreditScore": credit,
            "Geography": geography,
            "Gender": gender,
            "Age": age,
            "Tenure": tenure,
            "Balance": balance,
            "NumOfProducts": products,
            "HasCrCard": has_card,
            "IsActiveMember": active,
            "EstimatedSalary": salary,
            LABEL: exited,
        }
    )
    return frame[list(COLUMNS)]


def write_if_missing(path: Path, rows: int | None = None, seed: int = DEFAULT_SEED) -> int:
    """Write `rows` (default DEFAULT_ROWS) synthetic customers to `path` unless a file is already there;
    returns how many rows it wrote (0 when the file existed)."""
    if path.exists():
        return 0
    rows = rows or DEFAULT_ROWS
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    generate(rows, seed).to_csv(partial, index=False)
    partial.replace(path)  # never leave a half-written table where training looks for one
    return rows


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def _intercept_for(logit: np.ndarray, rate: float) -> float:
    """The shift that makes the mean churn probability `rate` (bisection: the mean is monotonic in it)."""
    low, high = -20.0, 20.0
    for _ in range(60):
        middle = (low + high) / 2
        if _sigmoid(logit + middle).mean() < rate:
            low = middle
        else:
            high = middle
    return (low + high) / 2
