"""Regenerate customers.csv, the bring-your-own-data test set (spec.yaml beside it).

Telecom customer-service contacts: one row per contact, customers contact support
a few times; the label says whether the customer churned within 30 days of the
contact ("yes"/"no"). The file differs from the demo claims data on purpose:
integer keys, naive "YYYY-MM-DD HH:MM:SS" timestamps (read as UTC), a string
label, a text column the model must not use, and missing values.

    python tests/data/churn/make_data.py   # rewrites customers.csv deterministically
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SEED = 20240305
N_CUSTOMERS = 400
START = pd.Timestamp("2024-01-01")
DAYS = 365
OUT = Path(__file__).with_name("customers.csv")

CONTRACTS = np.array(["month-to-month", "one-year", "two-year"])
PAYMENTS = np.array(["card", "bank_transfer", "electronic_check", "mailed_check"])
REASONS = np.array(["billing", "technical", "cancellation_request", "upgrade", "other"])


def make() -> pd.DataFrame:
    rng = np.random.default_rng(SEED)
    n = N_CUSTOMERS
    contract = rng.choice(3, n, p=[0.55, 0.25, 0.20])
    payment = rng.choice(4, n, p=[0.3, 0.25, 0.3, 0.15])
    tenure0 = rng.integers(0, 72, n)
    charges = np.round(rng.uniform(20, 110, n), 2)
    usage = rng.gamma(2.0, 6.0, n)
    paperless = rng.random(n) < 0.6
    unhappy = rng.normal(0, 0.8, n)  # hidden
    contacts = 1 + rng.poisson(1.6 + np.maximum(unhappy, 0), n)

    c = np.repeat(np.arange(n), contacts)
    m = len(c)
    t = np.floor(rng.uniform(0, DAYS * 86400, m)).astype(np.int64)
    order = np.lexsort((t, c))
    c, t = c[order], t[order]
    first = np.r_[True, c[1:] != c[:-1]]
    gap_days = np.where(first, np.inf, np.diff(t, prepend=0) / 86400)
    reason = rng.choice(5, m, p=[0.3, 0.3, 0.1, 0.15, 0.15])
    satisfaction = np.clip(np.round(3.2 - unhappy[c] + rng.normal(0, 0.9, m)), 1, 5)

    z = (-2.4 + 1.3 * (contract[c] == 0) - 0.8 * (contract[c] == 2) + 0.6 * (payment[c] == 2)
         - 0.03 * tenure0[c] + 0.015 * (charges[c] - 65) + 1.6 * (reason == 2)
         - 0.5 * (satisfaction - 3) + 0.9 * (gap_days < 30) + 0.5 * unhappy[c])
    churned = rng.random(m) < 1 / (1 + np.exp(-z))

    def miss(values: np.ndarray, rate: float) -> pd.Series:
        return pd.Series(values).where(rng.random(m) >= rate)

    epoch = START + pd.to_timedelta(t, unit="s")
    df = pd.DataFrame({
        "interaction_id": 0,
        "customer_id": 1000 + c,
        "contacted_at": epoch.strftime("%Y-%m-%d %H:%M:%S"),
        "tenure_months": tenure0[c] + t // (30 * 86400),
        "monthly_charges": charges[c],
        "data_usage_gb": miss(np.round(usage[c] * rng.lognormal(0, 0.3, m), 2), 0.03),
        "contract": CONTRACTS[contract[c]],
        "payment_method": miss(PAYMENTS[payment[c]], 0.02),
        "paperless_billing": np.where(paperless[c], "true", "false"),
        "reason": REASONS[reason],
        "satisfaction_score": miss(satisfaction, 0.15).astype("Int64"),
        "agent_code": [f"AG-{k:03d}" for k in rng.integers(1, 40, m)],
        "churned": np.where(churned, "yes", "no"),
    })
    df = df.sort_values(["contacted_at", "customer_id"], kind="stable").reset_index(drop=True)
    df["interaction_id"] = np.arange(1, len(df) + 1)
    return df


if __name__ == "__main__":
    frame = make()
    OUT.write_text(frame.to_csv(index=False, lineterminator="\n"), encoding="utf-8")
    print(f"wrote {OUT}: {len(frame)} rows, churned=yes {np.mean(frame.churned == 'yes'):.1%}")
