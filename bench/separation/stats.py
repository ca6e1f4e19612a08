"""Paired statistics for the separation study, pure numpy.

Unit: one (subject, seed). Two modes are compared on the same units (same subject, seed, LoRA init, training
noise and sampling seeds), so the comparison is the per-unit difference. Seeds of one subject are not independent
draws of subjects, so they are averaged first and the subject is what is resampled:

    per-subject Δ = mean over the subject's seeds of (rate_a - rate_b)
    estimate      = mean of the per-subject Δ
    95 % CI       = percentile bootstrap over subjects
    p             = exact sign-flip test over subjects (Monte Carlo past 20 subjects), two-sided
    Holm          = step-down over the primary claims' p, adjusted p monotone in the sorted order
    verdict       = "holds" (adjusted p < alpha, in the claimed direction), "reversed" (adjusted p < alpha,
                    against it), "inconclusive" (otherwise), "not testable" (a gate failed; no test at all)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

ALPHA = 0.05
VERDICTS = ("holds", "reversed", "inconclusive", "not testable")


def by_subject(values: Mapping[tuple, float]) -> dict:
    """{(subject, seed): x} -> {subject: mean over its seeds}."""
    acc: dict = {}
    for (subject, _seed), x in values.items():
        acc.setdefault(subject, []).append(float(x))
    return {s: sum(v) / len(v) for s, v in acc.items()}


def paired_deltas(a: Mapping[tuple, float], b: Mapping[tuple, float]) -> dict:
    """{subject: mean over seeds of a - b}, on the units both have."""
    # sorted: a set's order follows the process's string hash seed, and the bootstrap indexes the values by position,
    # so an unsorted order gave the same units different intervals in different processes
    common = sorted(set(a) & set(b))
    return by_subject({u: a[u] - b[u] for u in common})


def bootstrap_ci(values, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean over the given (per-subject) values."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]), math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(1)
    tail = (1 - level) / 2 * 100
    return float(x.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def sign_flip_p(values, n_mc: int = 200_000, seed: int = 0) -> float:
    """Two-sided p of 'the mean difference is 0' by flipping the sign of each subject's difference: exact (all 2^n
    sign patterns) up to 20 subjects. A difference of exactly 0 everywhere gives p = 1."""
    x = np.asarray(list(values), dtype=float)
    n = x.size
    if n == 0:
        return math.nan
    observed = abs(x.mean())
    if n <= 20:
        patterns = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    else:
        patterns = np.random.default_rng(seed).choice((-1, 1), (n_mc, n))
    means = np.abs((patterns * x).mean(1))
    return float(np.mean(means >= observed - 1e-12))


def holm(pvalues: Mapping[str, float]) -> dict:
    """Holm-adjusted p per claim: sort ascending, p_(i) x (m - i), running maximum, capped at 1. NaN (untested)
    claims are left out of the family and stay NaN."""
    tested = sorted(((p, k) for k, p in pvalues.items() if not math.isnan(p)), key=lambda t: t[0])
    m = len(tested)
    out = {k: math.nan for k in pvalues}
    running = 0.0
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, p * (m - i)))
        out[k] = running
    return out


def verdict(estimate: float, p_adjusted: float, direction: int = 1, testable: bool = True,
            alpha: float = ALPHA) -> str:
    """direction +1: the claim says the difference is positive; -1: negative (e.g. less leak)."""
    if not testable or math.isnan(p_adjusted) or math.isnan(estimate):
        return "not testable"
    if p_adjusted >= alpha:
        return "inconclusive"
    return "holds" if estimate * direction > 0 else "reversed"


def mean_ci(values: Mapping[tuple, float], n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float, int]:
    """(mean, low, high, subjects) of a rate over units, bootstrapped over subjects."""
    subj = by_subject(values)
    m, lo, hi = bootstrap_ci(list(subj.values()), n_boot=n_boot, seed=seed)
    return m, lo, hi, len(subj)


def detectable_difference(sd: float, subjects: int, family: int, power: float = 0.8, alpha: float = ALPHA) -> float:
    """The smallest true paired difference detected with `power` by a two-sided test at Holm's strictest level
    alpha / family, normal approximation: (z_{1 - alpha / 2m} + z_power) x sd / sqrt(subjects)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf
    return (z(1 - alpha / (2 * family)) + z(power)) * sd / math.sqrt(max(1, subjects))


def compare(a: Mapping[tuple, float], b: Mapping[tuple, float], n_boot: int = 10_000, seed: int = 0) -> dict:
    """Paired comparison of two modes' per-unit rates: estimate, CI, p, subjects, units."""
    d = paired_deltas(a, b)
    est, lo, hi = bootstrap_ci(list(d.values()), n_boot=n_boot, seed=seed)
    return {"delta": est, "low": lo, "high": hi, "p": sign_flip_p(list(d.values())), "subjects": len(d),
            "units": len(set(a) & set(b)), "sd": float(np.std(list(d.values()), ddof=1)) if len(d) > 1 else math.nan}


def judge(comparisons: Mapping[str, dict], directions: Mapping[str, int], testable: Mapping[str, bool],
          alpha: float = ALPHA) -> dict:
    """Holm over the testable claims, then a verdict for each: {claim: {**comparison, p_holm, verdict}}."""
    pv = {k: (c["p"] if testable.get(k, True) else math.nan) for k, c in comparisons.items()}
    adj = holm(pv)
    return {k: {**c, "p_holm": adj[k], "verdict": verdict(c["delta"], adj[k], directions[k], testable.get(k, True),
                                                          alpha)} for k, c in comparisons.items()}
