"""The separation study's statistics (bench/separation/stats.py) on constructed data: a known paired difference is
found, a null one is not, a reversed one is called reversed, pairing matters, and Holm orders and adjusts as it
should. Nothing here reads a real run."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.separation import stats  # noqa: E402


def _units(subjects=16, seeds=2, base=0.5, shift=0.0, noise=0.1, subject_sd=0.25, seed=0, offsets=None):
    """Rates per (subject, seed) for two modes sharing each subject's own difficulty (the pairing)."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0, subject_sd, subjects) if offsets is None else offsets
    a, b = {}, {}
    for s in range(subjects):
        for k in range(seeds):
            b[(s, k)] = base + offsets[s] + rng.normal(0, noise)
            a[(s, k)] = base + offsets[s] + shift + rng.normal(0, noise)
    return a, b


def test_a_known_difference_is_found_with_a_ci_around_it():
    a, b = _units(shift=0.15)
    c = stats.compare(a, b)
    assert c["subjects"] == 16 and c["units"] == 32
    assert c["low"] < 0.15 < c["high"] and c["low"] > 0
    assert c["p"] < 0.001
    out = stats.judge({"x": c}, {"x": 1}, {"x": True})
    assert out["x"]["verdict"] == "holds"


def test_a_null_difference_is_not_found():
    found = 0
    for seed in range(20):
        a, b = _units(shift=0.0, seed=seed)
        c = stats.compare(a, b, seed=seed)
        found += stats.judge({"x": c}, {"x": 1}, {"x": True})["x"]["verdict"] != "inconclusive"
    assert found <= 2  # 5 % expected; 2 of 20 still passes by chance in under 3 % of worlds


def test_a_difference_against_the_claim_is_reversed_and_an_untestable_one_is_not_tested():
    a, b = _units(shift=-0.2)
    c = stats.compare(a, b)
    out = stats.judge({"up": c, "down": c, "gated": c}, {"up": 1, "down": -1, "gated": 1},
                      {"up": True, "down": True, "gated": False})
    assert out["up"]["verdict"] == "reversed" and out["down"]["verdict"] == "holds"
    assert out["gated"]["verdict"] == "not testable" and math.isnan(out["gated"]["p_holm"])


def test_pairing_finds_what_unpaired_comparison_of_means_cannot():
    # subjects differ a lot (sd 0.3), the modes by 0.1 per subject with little noise: paired it is clear
    a, b = _units(shift=0.1, noise=0.02, subject_sd=0.3, seed=3)
    c = stats.compare(a, b)
    assert c["p"] < 0.001 and c["low"] > 0.05
    ma, lo_a, hi_a, _ = stats.mean_ci(a)
    mb, lo_b, hi_b, _ = stats.mean_ci(b)
    assert lo_a < hi_b and lo_b < hi_a  # the two arms' own intervals overlap: unpaired, nothing would be seen


def test_seeds_are_averaged_within_a_subject_before_resampling():
    a = {("s1", 0): 1.0, ("s1", 1): 0.0, ("s2", 0): 1.0, ("s2", 1): 1.0}
    b = {("s1", 0): 0.0, ("s1", 1): 0.0, ("s2", 0): 0.0, ("s2", 1): 0.0, ("s3", 0): 0.5}
    assert stats.paired_deltas(a, b) == {"s1": 0.5, "s2": 1.0}  # s3 has no pair


def test_sign_flip_is_exact_for_small_n():
    # 4 subjects all +1: of the 16 sign patterns only the all-plus and all-minus reach |mean| 1
    assert stats.sign_flip_p([1, 1, 1, 1]) == 2 / 16
    assert stats.sign_flip_p([0, 0, 0]) == 1.0


def test_holm_orders_and_adjusts():
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": math.nan}
    adj = stats.holm(p)
    # sorted: d 0.005 x 4 = 0.02; a 0.01 x 3 = 0.03; c 0.03 x 2 = 0.06; b 0.04 x 1 = 0.04 -> running max 0.06
    assert adj["d"] == 0.02 and adj["a"] == 0.03 and adj["c"] == 0.06 and adj["b"] == 0.06
    assert math.isnan(adj["e"])
    ests = {k: {"delta": 0.1, "low": 0, "high": 0.2, "p": v} for k, v in p.items() if k != "e"}
    out = stats.judge(ests, dict.fromkeys(ests, 1), dict.fromkeys(ests, True))
    assert [k for k in "abcd" if out[k]["verdict"] == "holds"] == ["a", "d"]
    # Holm is never stricter than Bonferroni and never looser than the raw p
    for k in "abcd":
        assert p[k] <= adj[k] <= min(1.0, p[k] * 4)


def test_detectable_difference_shrinks_with_subjects():
    d16 = stats.detectable_difference(0.2, 16, family=12)
    d32 = stats.detectable_difference(0.2, 32, family=12)
    assert 0.17 < d16 < 0.2 and math.isclose(d32, d16 / math.sqrt(2))


def test_the_per_subject_prior_family_drops_the_favoured_texture_and_judges_the_rest():
    from bench.separation import analysis as A
    from bench.separation import unnamed as W

    shapes = {s: (0.3 if s in W.UNNAMED_SHAPES else 0.0) for s in W.SHAPES}
    favoured, other = W.UNNAMED_STYLES[1], W.UNNAMED_STYLES[3]  # v3's slope and grid: whichever world is current
    styles = {y: 0.0 for y in W.STYLES}
    styles.update({favoured: 0.69, other: 0.12})
    prior = {"pass": False, "a shape in pattern style": {"shapes": shapes, "styles": styles}}
    keep = A.prior_free_subjects(prior)
    assert len(keep) == 12 and not any(k.endswith(f"/{favoured}") for k in keep)

    rng = np.random.default_rng(1)
    units = {}
    for arm, recreate, recontext in (("base", 0.1, 0.1), ("naive", 0.8, 0.3), ("unziplora", 0.8, 0.6)):
        units[arm] = {}
        for s, y in W.SUBJECTS:
            for seed in (0, 1):
                # on the favoured texture's subjects M3 is no better than naive: only the kept ones carry the difference
                r = recontext if (y != favoured or arm != "unziplora") else 0.3
                units[arm][(f"{s}/{y}", seed)] = {"recreate": recreate + rng.normal(0, 0.02),
                                                  "recontext": r + rng.normal(0, 0.05)}
    gates = {"classifiers": {"pass": True}, "composition": {"pass": True}, "prior": prior, "blocks": {"pass": False}}
    out = A.per_subject_prior_claims(units, gates, ("naive", "unziplora"))
    assert out["subjects"] == keep and out["recreate"]["unziplora"]["pass"]
    assert out["claims"]["C1"]["subjects"] == 12 and out["claims"]["C1"]["verdict"] == "holds"
    assert 0.2 < out["claims"]["C1"]["delta"] < 0.4
    assert out["claims"]["C8"]["verdict"] == "not testable"  # the block gate failed
    primary = A.claims(units, gates, A.recreate_gates(units, ("naive", "unziplora")))
    assert primary["C1"]["verdict"] == "not testable"  # the whole-prompt prior gate still decides the primary family


def test_the_same_units_give_the_same_interval_in_every_process():
    """Bug (session 9): paired_deltas walked a set of (subject, seed) keys, whose order follows PYTHONHASHSEED, and
    the bootstrap draws values by position, so two reports of one cached run printed different intervals."""
    import os
    import subprocess

    code = ("import sys; sys.path.insert(0, '.'); import numpy as np; from bench.separation import stats; "
            "r = np.random.default_rng(3); keys = [(f'subject{i}', s) for i in range(16) for s in (0, 1)]; "
            "a = {k: float(r.random()) for k in keys}; b = {k: float(r.random()) for k in keys}; "
            "c = stats.compare(a, b); print(repr((c['low'], c['high'])))")
    root = str(Path(__file__).resolve().parents[1])
    outs = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout for h in (1, 2, 3, 4)}
    assert len(outs) == 1, outs
