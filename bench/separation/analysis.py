"""From cached units and gates to the three tables of the unnamed-world study: gates; rates per arm as
mean [95 % CI] over subjects with an "unreadable" column; the paper's claims as paired Δ [CI], Holm-adjusted p and
a verdict (bench/separation/stats.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import gates as G
from . import stats
from . import unnamed as W
from .classify import REJECT_BELOW

METRICS = (
    # (key, header, probe kind)
    ("recontext", "content alone: S in the new named style", "content alone"),
    ("shape_kept", "content alone: S kept", "content alone"),
    ("content_leak", "content alone: T leaks", "content alone"),
    ("restyle", "style alone: T on the new named shape", "style alone"),
    ("style_kept", "style alone: T kept", "style alone"),
    ("style_leak", "style alone: S leaks", "style alone"),
    ("recreate", "both: S and T", "both"),
    ("crossed", "crossed: S and partner's T", "crossed"),
    ("unreadable", "unreadable", None),
)

# (id, claim, metric, arm a, arm b, direction, needs the block gate). Holm runs over all of them.
CLAIMS = (
    ("C1", "M3's content LoRA takes a new style better than naive's", "recontext", "unziplora", "naive", 1, False),
    ("C2", "M3's content LoRA leaks less of its texture than naive's", "content_leak", "unziplora", "naive", -1, False),
    ("C3", "M3's style LoRA carries its texture to a new shape better than naive's", "restyle", "unziplora", "naive",
     1, False),
    ("C4", "M3's style LoRA leaks less of its shape than naive's", "style_leak", "unziplora", "naive", -1, False),
    ("C5", "content of one image + style of another combine better with M3 than naive", "crossed", "unziplora",
     "naive", 1, False),
    ("C6", "prompt separation alone (M1) recontextualises better than naive", "recontext", "prompt", "naive", 1, False),
    ("C7", "column separation (M2) adds to prompt separation (M1)", "recontext", "column", "prompt", 1, False),
    ("C8", "block separation (M3) adds to column separation (M2)", "recontext", "unziplora", "column", 1, True),
    ("C9", "M3 recontextualises better than B-LoRA", "recontext", "unziplora", "blora", 1, False),
    ("C10", "M3 beats naive at M3's kept fraction as strength (not just less LoRA)", "recontext", "unziplora",
     "naive_strength", 1, False),
    ("C11", "M3 beats naive with random masks at M3's kept fraction per layer", "recontext", "unziplora",
     "naive_randmask", 1, False),
    ("C12", "M3 beats naive with each side replaced by the average of the two", "recontext", "unziplora",
     "naive_average", 1, False),
)


EXTRA = (
    ("C8d", "block separation with the diagnostic's roles adds to column separation (M2)", "recontext",
     "unziplora_diag", "column", 1, True),
)


def unit_metrics(rec: dict) -> dict:
    """Rates of one unit (fractions of its sampled images); unreadable images count as failures."""
    S, T = W.SHAPES.index(rec["subject"][0]), W.STYLES.index(rec["subject"][1])
    Tp = W.STYLES.index(rec["partner"][1])
    acc: dict = {k: [] for k, _, _ in METRICS}
    for p in rec["probes"]:
        for s, cs, y, cy in zip(p["shape"], p["shape_conf"], p["style"], p["style_conf"]):
            rs, ry = cs >= REJECT_BELOW, cy >= REJECT_BELOW
            acc["unreadable"].append(not (rs and ry))
            if p["kind"] == "content alone":
                y2 = W.STYLES.index(p["new_style"])
                acc["recontext"].append(rs and ry and s == S and y == y2)
                acc["shape_kept"].append(rs and s == S)
                acc["content_leak"].append(ry and y == T)
            elif p["kind"] == "style alone":
                x2 = W.SHAPES.index(p["new_shape"])
                acc["restyle"].append(rs and ry and y == T and s == x2)
                acc["style_kept"].append(ry and y == T)
                acc["style_leak"].append(rs and s == S)
            elif p["kind"] == "both":
                acc["recreate"].append(rs and ry and s == S and y == T)
            elif p["kind"] == "crossed":
                acc["crossed"].append(rs and ry and s == S and y == Tp)
    return {k: sum(v) / len(v) for k, v in acc.items() if v}


def load_units(folder: Path) -> dict:
    """{arm: {(subject, seed): metrics}} from a study folder's units/."""
    out: dict = {}
    for f in sorted((folder / "units").glob("*.json")):
        rec = json.loads(f.read_text())
        out.setdefault(rec["arm"], {})[("/".join(rec["subject"]), rec["seed"])] = unit_metrics(rec)
    return out


def load_runs(folder: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((folder / "runs").glob("*/run.json"))]


def metric(units: dict, arm: str, key: str) -> dict:
    return {u: m[key] for u, m in units.get(arm, {}).items() if key in m}


def recreate_gates(units: dict, arms) -> dict:
    out = {}
    for arm in arms:
        if arm == "base" or arm not in units:
            continue
        c = stats.compare(metric(units, arm, "recreate"), metric(units, "base", "recreate"))
        out[arm] = {**c, "pass": (not math.isnan(c["low"])) and c["low"] >= G.GATE_RECREATE}
    return out


def claims(units: dict, gates: dict, recreate: dict, family=CLAIMS) -> dict:
    """The family's claims judged together (Holm over the testable ones)."""
    base_ok = all(gates[k]["pass"] for k in ("classifiers", "composition", "prior"))
    comps, dirs, testable = {}, {}, {}
    for cid, _text, key, a, b, direction, needs_blocks in family:
        comps[cid] = stats.compare(metric(units, a, key), metric(units, b, key))
        dirs[cid] = direction
        gate_of = lambda arm: recreate.get("naive" if arm.startswith("naive_") else arm, {}).get("pass", False)  # noqa: E731
        ok = base_ok and gate_of(a) and gate_of(b) and comps[cid]["subjects"] >= 2
        testable[cid] = ok and (gates["blocks"]["pass"] if needs_blocks else True)
    return stats.judge(comps, dirs, testable)


def prior_free_subjects(prior: dict) -> list[str]:
    """Subjects neither of whose factors the base draws for "a shape in pattern style" in more than GATE_PRIOR_MAX
    of its images: the prior gate asked per subject instead of for the whole prompt."""
    plain = prior["a shape in pattern style"]
    return [f"{s}/{y}" for s, y in W.SUBJECTS
            if plain["shapes"][s] <= G.GATE_PRIOR_MAX and plain["styles"][y] <= G.GATE_PRIOR_MAX]


def per_subject_prior_claims(units: dict, gates: dict, arms) -> dict:
    """The exploratory family (registered in session 8 after the prior gate failed on the slope texture, before any
    unit of the full run was read): the twelve claims on the subjects whose factors the prior does not favour, with
    the recreation gates recomputed on those subjects and every other gate as it is. Outside the primary verdicts."""
    keep = prior_free_subjects(gates["prior"])
    sub = {arm: {u: m for u, m in us.items() if u[0] in keep} for arm, us in units.items()}
    recreate = recreate_gates(sub, arms)
    judged = claims(sub, {**gates, "prior": {**gates["prior"], "pass": True}}, recreate)
    return {"subjects": keep, "recreate": recreate, "claims": judged}


def per_subject_text(ps: dict) -> str:
    rec = "; ".join(f"{arm} {_ci(r['delta'], r['low'], r['high'])} {'pass' if r['pass'] else 'fail'}"
                    for arm, r in ps["recreate"].items())
    return "\n".join([
        "Exploratory, outside the primary verdicts: the prior gate asked per subject (neither factor drawn in more "
        f"than {G.GATE_PRIOR_MAX} of \"a shape in pattern style\"), registered before this run's units were read. "
        f"Subjects kept: {len(ps['subjects'])} ({', '.join(ps['subjects'])}). Recreation over the base on them: {rec}.",
        "", claims_table(ps["claims"])])


def extra_claims(units: dict, gates: dict, recreate: dict) -> dict:
    return claims(units, gates, recreate, EXTRA)


def _ci(m, lo, hi) -> str:
    if math.isnan(m):
        return "–"
    return f"{m:.2f}" if math.isnan(lo) else f"{m:.2f} [{lo:.2f}, {hi:.2f}]"


def gates_table(gates: dict, recreate: dict) -> str:
    c, comp, prior, blocks = gates["classifiers"], gates["composition"], gates["prior"], gates["blocks"]
    plain, trig = prior["a shape in pattern style"], prior["a sks shape in pattern style"]
    yes = lambda ok: "pass" if ok else "**fail**"  # noqa: E731
    rows = ["| gate | measured | rule | result |", "|---|---|---|---|",
            f"| classifiers read renders | held-out renders read right (reject = wrong): shape {c['content_read']:.3f}, "
            f"texture {c['style_read']:.3f}; colour-cast {c['content_read_cast']:.3f} / {c['style_read_cast']:.3f}; "
            f"unreadable {c['unreadable']:.3f} | ≥ {G.GATE_CLASSIFIER} each, clean | {yes(c['renders_pass'])} |",
            _hand_row(c["hand"], yes),
            f"| base composes named pairs | never-captioned named pairs, both right {comp['held-out named']['both']:.2f} "
            f"(shape {comp['held-out named']['shape']:.2f}, style {comp['held-out named']['style']:.2f}, "
            f"{comp['held-out named']['images']} images); trained named pairs {comp['trained named']['both']:.2f} | "
            f"≥ {G.GATE_COMPOSITION} | {yes(comp['pass'])} |",
            f"| unnamed prior flat | \"a shape in pattern style\": unnamed shape and texture {plain['unnamed_both']:.2f}, "
            f"largest shape {plain['max_shape']:.2f}, texture {plain['max_style']:.2f}, subject {plain['max_subject']:.2f} "
            f"({plain['images']} images); with \"sks\": {trig['unnamed_both']:.2f} / {trig['max_shape']:.2f} / "
            f"{trig['max_style']:.2f} / {trig['max_subject']:.2f} | unnamed ≥ {G.GATE_PRIOR_OBEYS}, largest ≤ "
            f"{G.GATE_PRIOR_MAX} (uniform 0.25; subject 0.06) | {yes(prior['pass'])} |"]
    roles = blocks.get("roles", {})
    if blocks.get("not_run"):
        rows.append("| a block specialises | the diagnostic has not run | one of each | **not run** (block claim C8 "
                    "not testable) |")
    else:
        rows.append(f"| a block specialises | content: {', '.join(b for b, r in roles.items() if r == 'content') or 'none'}; "
                    f"style: {', '.join(b for b, r in roles.items() if r == 'style') or 'none'} (table below) | one of "
                    f"each, Δ ≥ {G.SPECIALISED} with CI off 0 | {yes(blocks['pass'])} (block claim C8) |")
    for arm, r in recreate.items():
        rows.append(f"| {arm} recreates its image | paired Δ over the base on \"both: S and T\" "
                    f"{_ci(r['delta'], r['low'], r['high'])} ({r['subjects']} subjects, {r['units']} units) | lower bound ≥ "
                    f"{G.GATE_RECREATE} | {yes(r['pass'])} |")
    return "\n".join(rows)


def _hand_row(hand: dict, yes) -> str:
    from .handcheck import GATE_HAND

    if "missing" in hand:
        return f"| classifiers read the base's samples | {hand['missing']} | ≥ {GATE_HAND} each | **fail** |"
    part = lambda h: f"{h['right']}/{h['labelled']} = {h['rate']:.3f} ({h['hand_unsure']} unsure)"  # noqa: E731
    dev = hand.get("dev")
    extra = f"; dev set (used to choose the augmentation) {dev['content']['rate']:.3f} / {dev['style']['rate']:.3f}" if dev else ""
    errors = ", ".join(f"{k} {v}" for h in ("content", "style") for k, v in hand[h]["errors"].items()) or "none"
    return (f"| classifiers read the base's samples | {hand['images']} base samples labelled by hand, read as labelled "
            f"(unreadable = wrong): shape {part(hand['content'])}, texture {part(hand['style'])}; errors: {errors}{extra} "
            f"| ≥ {GATE_HAND} each | {yes(hand['pass'])} |")


def blocks_table(blocks: dict) -> str:
    rows = ["| block fed the other prompt | shape follows | texture follows | Δ [95 % CI] | carries |",
            "|---|---|---|---|---|"]
    for b, r in blocks["blocks"].items():
        rows.append(f"| {b} | {r['shape_follows']:.2f} | {r['style_follows']:.2f} | "
                    f"{_ci(r['delta'], r['low'], r['high'])} | {r['carries']} |")
    return "\n".join(rows)


def rates_table(units: dict, arms) -> str:
    rows = ["| arm | units | " + " | ".join(h for _, h, _ in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for arm in arms:
        if arm not in units:
            continue
        cells = []
        for key, _, _ in METRICS:
            m, lo, hi, _n = stats.mean_ci(metric(units, arm, key))
            cells.append(_ci(m, lo, hi))
        n_subj = len({s for s, _ in units[arm]})
        rows.append(f"| {arm} | {len(units[arm])} ({n_subj} subj.) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def claims_table(judged: dict, family=CLAIMS) -> str:
    rows = ["| id | claim | Δ [95 % CI] (a − b) | subjects | p (Holm) | verdict |", "|---|---|---|---|---|---|"]
    for cid, text, key, a, b, _d, _nb in family:
        r = judged[cid]
        p = "–" if math.isnan(r["p_holm"]) else f"{r['p_holm']:.3g}"
        rows.append(f"| {cid} | {text} ({key}: {a} − {b}) | {_ci(r['delta'], r['low'], r['high'])} | {r['subjects']} | "
                    f"{p} | {r['verdict']} |")
    return "\n".join(rows)


def runs_table(runs: list[dict]) -> str:
    by_mode: dict = {}
    for r in runs:
        by_mode.setdefault(r["mode"], []).append(r)
    # the mean and the worst run, not a count of runs ending above their start: a single image's loss over 20 steps
    # is too noisy for that count (session 8: 11-12 of 24-28 runs "ended above" at a recipe whose means fell by a third)
    rows = ["| mode | runs | final loss (last 20 steps) | first 20 steps | worst final | content kept | style kept "
            "| s / run |", "|---|---|---|---|---|---|---|---|"]
    for mode, rs in by_mode.items():
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        rows.append(f"| {mode} | {len(rs)} | {mean([r['final_loss'] for r in rs]):.4f} | "
                    f"{mean([r['first_loss'] for r in rs]):.4f} | {max(r['final_loss'] for r in rs):.4f} | "
                    f"{mean([r['kept']['content']['all'] for r in rs]):.2f} | "
                    f"{mean([r['kept']['style']['all'] for r in rs]):.2f} | {mean([r['seconds'] for r in rs]):.0f} |")
    return "\n".join(rows)


def runs_csv(runs: list[dict]) -> str:
    lines = ["mode,subject,seed,steps,first_loss,final_loss,content_kept,style_kept,seconds"]
    for r in runs:
        lines.append(f"{r['mode']},{'/'.join(r['subject'])},{r['seed']},{r['steps']},{r['first_loss']:.5f},"
                     f"{r['final_loss']:.5f},{r['kept']['content']['all']:.4f},{r['kept']['style']['all']:.4f},"
                     f"{r['seconds']}")
    return "\n".join(lines) + "\n"


def power_lines(judged: dict, subjects: int = 16) -> list[str]:
    """From the per-subject SD of each claim's differences: the difference detectable at 80 % power."""
    out = []
    for cid, r in judged.items():
        if not math.isnan(r.get("sd", math.nan)):
            out.append(f"{cid}: SD of per-subject Δ {r['sd']:.2f} over {r['subjects']} subjects → detectable at "
                       f"{subjects} subjects {stats.detectable_difference(r['sd'], subjects, len(CLAIMS)):.2f}")
    return out
