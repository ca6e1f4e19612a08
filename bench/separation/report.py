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
