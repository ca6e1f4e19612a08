"""The table: per mode, each probe's rates as mean ± spread, where the spread is the standard deviation of the
per-(image, seed) rates (so it says how much the answer depends on the image and the seed)."""

from __future__ import annotations

import statistics

COLUMNS = (
    # (header, probe kind, field)
    ("content alone: shape kept", "content alone", "shape_ok"),
    ("content alone: new style", "content alone", "style_ok"),
    ("content alone: style leak", "content alone", "style_leak"),
    ("style alone: style kept", "style alone", "style_ok"),
    ("style alone: new shape", "style alone", "shape_ok"),
    ("style alone: shape leak", "style alone", "shape_leak"),
    ("both: recreated", "both", "both_ok"),
    ("crossed: A's shape + B's style", "crossed", "both_ok"),
)


def cell_values(records, kind, fld) -> list[float]:
    """One rate per (image, seed): the fraction of that unit's images where `fld` holds."""
    units: dict[tuple, list] = {}
    for r in records:
        if r["kind"] != kind:
            continue
        if fld == "both_ok":
            vals = [a and b for a, b in zip(r["shape_ok"], r["style_ok"])]
        else:
            vals = r.get(fld)
            if vals is None:
                continue
        units.setdefault((tuple(r["pair"]), r["seed"]), []).extend(vals)
    return [sum(v) / len(v) for v in units.values() if v]


def fmt(values) -> str:
    if not values:
        return "–"
    mean = sum(values) / len(values)
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {spread:.2f}"


def summary(records_by_mode: dict) -> dict:
    return {mode: {h: cell_values(recs, k, f) for h, k, f in COLUMNS} for mode, recs in records_by_mode.items()}


def markdown_table(records_by_mode: dict) -> str:
    rows = ["| mode | " + " | ".join(h for h, _, _ in COLUMNS) + " |",
            "|---|" + "---|" * len(COLUMNS)]
    for mode, cells in summary(records_by_mode).items():
        label = "base model, no LoRA" if mode == "base" else mode
        rows.append(f"| {label} | " + " | ".join(fmt(cells[h]) for h, _, _ in COLUMNS) + " |")
    return "\n".join(rows)


def mean(values) -> float:
    return sum(values) / len(values) if values else float("nan")


# (claim from the paper, column, lower is better?, modes compared: first should beat the second)
CLAIMS = (
    ("Content LoRA alone leaks less of the training style than naive joint training (M3 vs baseline)",
     "content alone: style leak", True, ("unziplora", "naive")),
    ("Style LoRA alone leaks less of the training content than naive (M3 vs baseline)",
     "style alone: shape leak", True, ("unziplora", "naive")),
    ("Prompt separation alone (M1) already reduces style leak in the content LoRA",
     "content alone: style leak", True, ("prompt", "naive")),
    ("Column separation (M2) adds to prompt separation (less style leak than M1)",
     "content alone: style leak", True, ("column", "prompt")),
    ("Block separation (M3) adds to column separation (less style leak than M2)",
     "content alone: style leak", True, ("unziplora", "column")),
    ("UnZipLoRA separates content better than B-LoRA (less style leak)",
     "content alone: style leak", True, ("unziplora", "blora")),
    ("The content LoRA takes a new style from the prompt (recontextualisation) better than naive's (M3 vs baseline)",
     "content alone: new style", False, ("unziplora", "naive")),
    ("Column separation (M2) lets the content LoRA take a new style better than prompt separation alone (M1)",
     "content alone: new style", False, ("column", "prompt")),
    ("The style LoRA carries its style to a new subject better than naive's (M3 vs baseline)",
     "style alone: style kept", False, ("unziplora", "naive")),
    ("The content LoRA keeps the subject under a new style prompt (M3 at least as well as naive)",
     "content alone: shape kept", False, ("unziplora", "naive")),
    ("Both LoRAs together recreate the image (M3 at least as well as naive)",
     "both: recreated", False, ("unziplora", "naive")),
    ("Content of one image and style of another combine (M3 better than naive)",
     "crossed: A's shape + B's style", False, ("unziplora", "naive")),
)


def claims_table(records_by_mode: dict, testable: bool = True) -> str:
    """The paper's qualitative claims next to the numbers measured here; 'holds' needs at least 3 (image, seed)
    units per mode and the difference to exceed the larger spread divided by sqrt(units) (about one standard
    error), else 'not shown'; an "at least as well" claim holds unless it is worse by more than that. testable=False (the base ignores its prompts): every verdict is 'not testable'."""
    cells = summary(records_by_mode)
    rows = ["| paper's claim | measured here | verdict |", "|---|---|---|"]
    for text, col, lower, (a, b) in CLAIMS:
        if a not in cells or b not in cells or not cells[a][col] or not cells[b][col]:
            continue
        va, vb = cells[a][col], cells[b][col]
        ma, mb = mean(va), mean(vb)
        n = min(len(va), len(vb))
        se = max(statistics.pstdev(va), statistics.pstdev(vb)) / max(1, n) ** 0.5
        better = (mb - ma) if lower else (ma - mb)
        if not testable:
            verdict = "not testable (the base ignores its prompts)"
        elif n < 3:
            verdict = f"not shown ({n} units)"
        elif better > max(se, 1e-9) or ("at least as well" in text and -better <= se):
            verdict = "holds"
        elif -better > max(se, 1e-9):
            verdict = "reversed"
        else:
            verdict = "not shown"
        rows.append(f"| {text} | {col}: {a} {ma:.2f} vs {b} {mb:.2f} | {verdict} |")
    return "\n".join(rows)
