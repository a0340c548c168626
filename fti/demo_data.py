"""Seeded generator of the demo raw data: motor-insurance claims (specs/claims.yaml).

Why the data looks the way it does:

* Policyholders file several claims over time (1 + a gamma-mixed Poisson count,
  capped at 12) and some claim in bursts a few weeks apart, so the spec's history
  features (prior claims, claims in the last 90 days, days since the last claim)
  carry signal, as they do in real fraud work.
* The fraud label is drawn from a logistic model of what claims adjusters look
  for: an amount that is large against the premium, a new policy, no police
  report, no witnesses, late reporting, theft or fire, the online/phone channel,
  night-time claims and a recent run of claims. A hidden per-policyholder
  propensity and the Bernoulli draw keep it imperfect: a good model reaches a
  ROC-AUC around 0.85, not 1.0. The intercept is solved so ~5.5% of claims are fraud.
* Sources are messy: several columns have missing values (empty CSV fields), rows
  are in the order the source received them, and ~2% arrive weeks or months late,
  which is what the spec's ``source.ingestion_time`` and ``--as-of`` are for.

Everything is a pure function of the arguments (one ``numpy.random.default_rng(seed)``,
a fixed draw order, no wall clock), so the same arguments give a byte-identical file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from shared.spec import load_spec

DAY = 86_400
COLUMNS = ["claim_id", "policyholder_id", "claim_ts", "ingested_at", "customer_age",
           "policy_tenure_months", "annual_premium", "vehicle_age", "claim_amount", "incident_type",
           "incident_severity", "region", "channel", "police_report", "witnesses", "days_to_report",
           "is_fraud"]

INCIDENT_TYPES = np.array(["collision", "theft", "fire", "vandalism", "glass", "weather", "animal"])
INCIDENT_P = [0.46, 0.08, 0.03, 0.10, 0.16, 0.11, 0.06]
TYPE_AMOUNT = np.array([1.0, 1.25, 1.4, 0.6, 0.3, 0.9, 0.8])
TYPE_FRAUD = np.array([0.0, 1.1, 1.0, 0.2, -1.0, -0.3, -0.4])
TYPE_REPORT = np.array([0.35, 0.85, 0.75, 0.5, 0.05, 0.1, 0.3])
SEVERITIES = np.array(["minor", "moderate", "major", "total_loss"])
SEVERITY_P = np.array([  # rows follow INCIDENT_TYPES
    [0.45, 0.33, 0.17, 0.05], [0.15, 0.25, 0.30, 0.30], [0.10, 0.25, 0.35, 0.30],
    [0.55, 0.35, 0.10, 0.00], [0.85, 0.15, 0.00, 0.00], [0.40, 0.35, 0.20, 0.05],
    [0.50, 0.35, 0.13, 0.02]])
SEVERITY_AMOUNT = np.array([900.0, 2800.0, 8000.0, 18000.0])
REGIONS = np.array(["north", "south", "east", "west", "central"])
REGION_P = [0.22, 0.24, 0.18, 0.20, 0.16]
REGION_PREMIUM = np.array([0.95, 1.0, 1.05, 0.9, 1.25])
CHANNELS = np.array(["agent", "broker", "online", "phone"])
CHANNEL_P = [0.34, 0.16, 0.32, 0.18]
CHANNEL_FRAUD = np.array([-0.3, 0.0, 0.4, 0.6])
MISSING = {"police_report": 0.10, "annual_premium": 0.02, "vehicle_age": 0.03,
           "witnesses": 0.05, "region": 0.01, "channel": 0.01}
FRAUD_RATE = 0.055


def _pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``probs``."""
    return np.minimum((rng.random(len(probs))[:, None] > probs.cumsum(axis=1)).sum(axis=1),
                      probs.shape[1] - 1)


def _intercept(z: np.ndarray, rate: float) -> float:
    """The b for which mean(sigmoid(z + b)) == rate (bisection; deterministic)."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(z + mid)))) < rate else (lo, mid)
    return (lo + hi) / 2


def generate_claims(*, n_policyholders: int = 4000, seed: int = 42,
                    start: str = "2023-01-01", end: str = "2025-12-31", drift_from: str | None = None
                    ) -> pd.DataFrame:
    """Claims filed on the days ``start`` through ``end`` (inclusive, UTC), in ingestion order.

    ``drift_from``: claims filed on or after this day come from a shifted population -- a third of the
    agent and broker business moves online, and claim amounts are inflated by 35% -- while the fraud
    label keeps its rule (so the model's inputs drift and its scores with them). The shift is drawn from
    a second generator, so every claim before ``drift_from`` is the same as without it."""
    if n_policyholders < 1:
        raise ValueError("n_policyholders must be at least 1")
    t0 = pd.Timestamp(start, tz="UTC").normalize()
    span = int((pd.Timestamp(end, tz="UTC").normalize() + pd.Timedelta(days=1) - t0).total_seconds())
    if span < 60 * DAY:
        raise ValueError(f"end ({end}) must be at least 60 days after start ({start})")
    rng = np.random.default_rng(seed)
    n = n_policyholders

    # --- policyholders ------------------------------------------------------
    age0 = np.clip(rng.normal(44, 14, n), 18, 85)
    joined_before = rng.random(n) < 0.7
    tenure0 = np.where(joined_before, rng.gamma(2.0, 30.0, n), 0.0)  # months at t0
    join = np.where(joined_before, 0.0, rng.uniform(0, span - 45 * DAY, n))  # seconds after t0
    region = rng.choice(len(REGIONS), n, p=REGION_P)
    channel_pref = rng.choice(len(CHANNELS), n, p=CHANNEL_P)
    vehicle_age0 = rng.gamma(2.0, 3.5, n)
    premium0 = (560 * (1 + 1.2 * np.exp(-(age0 - 18) / 8)) * np.exp(-0.025 * vehicle_age0)
                * REGION_PREMIUM[region] * rng.lognormal(0, 0.25, n))
    propensity = rng.normal(0, 0.6, n)  # hidden: never written out
    exposure = (span - join) / span  # claim frequency is per insured year
    n_claims = np.minimum(1 + rng.poisson(rng.gamma(1.5, 2.8, n) * np.exp(0.3 * propensity) * exposure), 12)
    bursty = rng.random(n) < 0.08 + 0.2 * (propensity > 0.6)
    burst_start = join + rng.random(n) * (span - join) * 0.85

    # --- claim times: uniform over the policy's life, or a burst of ~3-week gaps
    h = np.repeat(np.arange(n), n_claims)
    m = len(h)
    uniform_t = join[h] + rng.random(m) * (span - join[h])
    gaps = rng.exponential(20 * DAY, m)
    first = np.concatenate([[0], np.cumsum(n_claims)[:-1]])
    within = np.cumsum(gaps) - np.repeat((np.cumsum(gaps) - gaps)[first], n_claims)
    t = np.where(bursty[h], np.minimum(burst_start[h] + within, span - 1), uniform_t)
    tod = np.where(rng.random(m) < 0.88, rng.normal(14 * 3600, 3.5 * 3600, m) % DAY,
                   rng.uniform(0, DAY, m))
    t = np.maximum(np.floor(t / DAY) * DAY + tod, np.ceil(join[h])).astype(np.int64)
    t = np.minimum(t, span - 1)

    # --- the policyholder's history strictly before each claim ---------------
    key = h.astype(np.int64) * (span + 400 * DAY) + t
    ks = np.sort(key)
    before = np.searchsorted(ks, key, "left")
    prior_90d = before - np.searchsorted(ks, key - 90 * DAY, "left")
    prev = np.maximum(before - 1, 0)
    has_prev = (before > 0) & (ks[prev] // (span + 400 * DAY) == h)
    days_since = np.where(has_prev, (key - ks[prev]) / DAY, np.inf)

    # --- claim attributes -----------------------------------------------------
    years = t / DAY / 365.25
    age = np.floor(age0[h] + years).astype(np.int64)
    tenure = np.floor(tenure0[h] + (t - join[h]) / (30.4375 * DAY)).astype(np.int64)
    vehicle_age = np.floor(vehicle_age0[h] + years).astype(np.int64)
    premium = np.round(premium0[h] * 1.04 ** years, 2)
    itype = rng.choice(len(INCIDENT_TYPES), m, p=INCIDENT_P)
    severity = _pick(rng, SEVERITY_P[itype])
    amount = np.round(np.maximum(SEVERITY_AMOUNT[severity] * TYPE_AMOUNT[itype]
                                 * rng.lognormal(0, 0.55, m), 50.0), 2)
    channel = np.where(rng.random(m) < 0.75, channel_pref[h], rng.choice(len(CHANNELS), m, p=CHANNEL_P))
    police = rng.random(m) < np.clip(TYPE_REPORT[itype] + 0.15 * severity, 0, 0.97)
    witnesses = rng.poisson(np.where(itype == 0, 0.9, 0.3) + 0.2 * severity)
    days_to_report = np.where(rng.random(m) < 0.08, rng.integers(10, 120, m),
                              np.floor(rng.exponential(2.5, m))).astype(np.int64)
    hour = (t % DAY) // 3600
    if drift_from is not None:  # after the label's inputs are drawn: the base draws stay in their order
        shifted = t >= int((pd.Timestamp(drift_from, tz="UTC").normalize() - t0).total_seconds())
        moved = shifted & (channel <= 1) & (np.random.default_rng(seed + 1).random(m) < 1 / 3)
        channel_seen = np.where(moved, 2, channel)
        amount_seen = np.where(shifted, np.round(amount * 1.35, 2), amount)
    else:
        channel_seen, amount_seen = channel, amount

    # --- the label ------------------------------------------------------------
    z = (0.9 * np.log(amount / premium) + 1.0 * (tenure < 6) + 0.5 * ((tenure >= 6) & (tenure < 18))
         + np.where(police, -0.3, 0.8) + 0.5 * (witnesses == 0) - 0.4 * (witnesses >= 2)
         + 0.035 * np.minimum(days_to_report, 60) + TYPE_FRAUD[itype] + CHANNEL_FRAUD[channel]
         + 0.8 * (hour < 6) + 0.6 * np.minimum(prior_90d, 4) + 0.9 * (days_since < 30)
         + propensity[h])
    p = 1 / (1 + np.exp(-(z + _intercept(z, FRAUD_RATE))))
    is_fraud = (rng.random(m) < p).astype(np.int64)

    # --- ingestion: minutes to days later, ~2% weeks to months late ------------
    delay = np.maximum(rng.lognormal(np.log(3 * 3600), 1.6, m), 30)
    delay = np.where(delay > 7 * DAY, rng.uniform(DAY, 7 * DAY, m), delay)
    late = rng.random(m) < 0.02
    delay = np.where(late, rng.uniform(14 * DAY, 150 * DAY, m), delay).astype(np.int64)

    miss = {c: rng.random(m) < p_miss for c, p_miss in MISSING.items()}
    order = np.lexsort((h, t))  # claim ids follow filing order
    claim_no = np.empty(m, dtype=np.int64)
    claim_no[order] = np.arange(1, m + 1)
    epoch = int(t0.timestamp())

    def ts(sec: np.ndarray) -> pd.Series:
        return pd.Series(pd.to_datetime(epoch + sec, unit="s", utc=True)).astype("datetime64[us, UTC]")

    def masked(values: np.ndarray, col: str) -> pd.Series:
        return pd.Series(values).where(~miss[col])

    df = pd.DataFrame({
        "claim_id": [f"C{i:07d}" for i in claim_no],
        "policyholder_id": [f"P{i + 1:05d}" for i in h],
        "claim_ts": ts(t),
        "ingested_at": ts(t + delay),
        "customer_age": age,
        "policy_tenure_months": tenure,
        "annual_premium": masked(premium, "annual_premium"),
        "vehicle_age": masked(vehicle_age, "vehicle_age").astype("Int64"),
        "claim_amount": amount_seen,
        "incident_type": INCIDENT_TYPES[itype],
        "incident_severity": SEVERITIES[severity],
        "region": masked(REGIONS[region[h]], "region").astype("str"),
        "channel": masked(CHANNELS[channel_seen], "channel").astype("str"),
        "police_report": pd.Series(police, dtype="boolean").where(~miss["police_report"]),
        "witnesses": masked(witnesses, "witnesses").astype("Int64"),
        "days_to_report": days_to_report,
        "is_fraud": is_fraud,
    })
    return df.sort_values(["ingested_at", "claim_id"], kind="stable").reset_index(drop=True)


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    """The CSV form: ISO 8601 UTC timestamps with 'Z', true/false booleans, empty = missing."""
    out = df.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.DatetimeTZDtype):
            out[col] = out[col].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        elif isinstance(out[col].dtype, pd.BooleanDtype):
            out[col] = out[col].map({True: "true", False: "false"}, na_action="ignore")
    return out.to_csv(index=False, lineterminator="\n").encode("utf-8")


def write_source(spec_path: str | os.PathLike[str], *, n_policyholders: int = 4000,
                 seed: int = 42, end: str = "2025-12-31", drift_from: str | None = None,
                 known_at: str | None = None) -> Path:
    """Generate the claims data and write it, atomically, where the spec's source points.

    ``known_at``: write only the rows ingested by the end of that day -- the source as it stood then.
    The drift scenario writes the same timeline (same ``end``, ``drift_from`` and seed) twice: known at
    the end of the normal period (train on it), then known later (the drifted claims, and the labels of
    the claims served meanwhile, have arrived)."""
    loaded = load_spec(spec_path)
    source = loaded.spec.source
    if source.format == "sql":
        raise ValueError("generate writes files; point the spec at a CSV/Parquet path "
                         f"(source.format is 'sql' in {loaded.path})")
    if set(loaded.spec.columns) != set(COLUMNS):
        raise ValueError(f"{loaded.path} does not declare the demo claims columns "
                         f"({', '.join(COLUMNS)}); the generator only writes claims data")
    assert source.path is not None  # guaranteed by SourceSpec for csv/parquet
    path = loaded.resolve_path(source.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = generate_claims(n_policyholders=n_policyholders, seed=seed, end=end,
                         drift_from=drift_from)[list(loaded.spec.columns)]
    if known_at is not None:
        cutoff = pd.Timestamp(known_at, tz="UTC").normalize() + pd.Timedelta(days=1)
        df = df[df["ingested_at"] < cutoff].reset_index(drop=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if source.format == "csv":
                fh.write(to_csv_bytes(df))
            else:
                df.to_parquet(fh, index=False, engine="pyarrow")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
