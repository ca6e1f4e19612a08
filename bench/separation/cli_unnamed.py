"""`python -m bench.separation --world unnamed ...`: the unnamed-world study (issue 18), resumable.

    .venv/bin/python -m bench.separation --seeds 0          # one process per seed (the other: --seeds 1)
    .venv/bin/python -m bench.separation --report           # tables from whatever units are cached so far
    .venv/bin/python -m bench.separation --report --write-results
    .venv/bin/python -m bench.separation --preset toy       # the smoke test's size (seconds)

Each (arm, subject, seed) unit and each LoRA run is cached under ~/.cache/unziplora-dev/separation/unnamed/<key>/,
so the same command continues a run that was cut off. --minutes stops cleanly after that long.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import analysis as A
from . import unnamed as W
from .env import REPO, cache_dir

SECTION = f"## Separation benchmark, unnamed world v{W.VERSION} (issue 18)"
RUNS_CSV = f"unnamed_v{W.VERSION}_runs.csv"  # bench/separation/results/


def build(argv=None) -> argparse.ArgumentParser:
    from .presets_unnamed import PRESETS
    from .study import ARMS

    ap = argparse.ArgumentParser(prog="python -m bench.separation --world unnamed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", choices=("unnamed", "named"), default="unnamed")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--cache", type=Path, default=None, help=f"cache folder (default {cache_dir()})")
    ap.add_argument("--subjects", type=int, default=None, help="how many of the 16 subjects (in a fixed order)")
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
    ap.add_argument("--minutes", type=float, default=None, help="stop starting new units after this long")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-gates", action="store_true", help="skip the base-model gates (they are cached once run)")
    ap.add_argument("--blocks-last", action="store_true",
                    help="run the block diagnostic after the units, not before (a pilot: units first; the extra "
                         "row of M3 with the diagnostic's roles is then left out)")
    ap.add_argument("--base-file", type=Path, default=None,
                    help="base weights to use instead of the cached base (a pilot on a partial checkpoint); units "
                         "go to a folder of their own")
    ap.add_argument("--lora-steps", type=int, default=None,
                    help="LoRA steps instead of the preset's (a pilot of the recipe: its units go to a folder of their own)")
    ap.add_argument("--lora-lr", type=float, default=None, help="LoRA learning rate instead of the preset's (a pilot)")
    ap.add_argument("--report", action="store_true", help="only print the tables from the cached units")
    ap.add_argument("--write-results", action="store_true", help="replace this study's section of bench/RESULTS.md")
    return ap


def subject_order(n: int):
    """A Latin order: the first 4 subjects already cover every unnamed shape and every texture once."""
    order = [(W.UNNAMED_SHAPES[i], W.UNNAMED_STYLES[(i + k) % 4]) for k in range(4) for i in range(4)]
    return order[:n]


def main(argv=None, log=print) -> dict:
    import torch

    from . import gates as G
    from .presets_unnamed import PRESETS
    from .study import Study

    args = build().parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    if args.lora_steps or args.lora_lr:
        from dataclasses import replace

        lora = replace(preset["lora"], steps=args.lora_steps or preset["lora"].steps, lr=args.lora_lr or preset["lora"].lr)
        preset = {**preset, "lora": lora}
    cache = Path(args.cache) if args.cache else cache_dir()
    t0 = time.time()
    study = Study(preset, cache, log, base_file=args.base_file)
    gates = {"classifiers": G.classifier_gate(study.acc, study.models)}
    if not args.no_gates or args.report:
        gates = G.all_gates(study, blocks=not args.blocks_last)
        if "blocks" not in gates:  # not run yet: the block claims are not testable, and the tables say so
            gates["blocks"] = {"pass": False, "roles": {}, "blocks": {}, "not_run": True}
        log("[gates] " + ", ".join(f"{k} {'pass' if v['pass'] else 'FAIL'}" for k, v in gates.items()))
    arms = tuple(args.arms)
    if gates.get("blocks", {}).get("pass"):  # blocks specialise: M3 with the diagnostic's roles as an extra row
        from .study import DIAG, register_diag_mode

        register_diag_mode(gates["blocks"]["roles"])
        arms += (DIAG,)
    seeds = tuple(args.seeds) if args.seeds else preset["seeds"]
    subjects = subject_order(args.subjects or preset["subjects"])
    if not args.report:
        deadline = None if args.minutes is None else t0 + args.minutes * 60
        study.run(subjects, seeds, arms, deadline)
        if args.blocks_last and not args.no_gates:
            gates = G.all_gates(study)
    elif "blocks" not in gates:
        gates["blocks"] = {"pass": False, "roles": {}, "blocks": {}, "not_run": True}
    result = summarise(study, gates)
    result["seconds"] = round(time.time() - t0, 1)
    log(result["text"])
    if args.write_results:
        command = ".venv/bin/python -m bench.separation " + " ".join(argv or [])
        write_section(section(result, command.strip(), preset))
        (REPO / "bench" / "separation" / "results").mkdir(exist_ok=True)
        (REPO / "bench" / "separation" / "results" / RUNS_CSV).write_text(A.runs_csv(result["runs"]))
    return result


def summarise(study, gates) -> dict:
    from .study import ARMS, DIAG

    units = A.load_units(study.dir)
    runs = A.load_runs(study.dir)
    recreate = A.recreate_gates(units, (*ARMS, DIAG))
    unit_seconds = sum(json.loads(f.read_text()).get("seconds", 0) for f in (study.dir / "units").glob("*.json"))
    out = {"units": units, "runs": runs, "gates": gates, "recreate": recreate, "folder": str(study.dir),
           "compute_s": {"lora training": round(sum(r["seconds"] for r in runs)), "sampling": round(unit_seconds)},
           "base": study.base_info}
    parts = []
    if "composition" in gates:
        parts += ["Gates:", A.gates_table(gates, recreate), "", "Blocks:", A.blocks_table(gates["blocks"]), ""]
        judged = A.claims(units, gates, recreate)
        out["claims"] = judged
        parts += ["Claims:", A.claims_table(judged), ""]
        if DIAG in units:
            out["extra"] = A.extra_claims(units, gates, recreate)
            parts += ["Extra row (not in the Holm family):", A.claims_table(out["extra"], A.EXTRA), ""]
        parts += A.power_lines(judged)
        if not gates["prior"]["pass"]:
            out["per_subject"] = A.per_subject_prior_claims(units, gates, (*ARMS, DIAG))
            parts += ["", A.per_subject_text(out["per_subject"])]
    parts += ["", "Rates:", A.rates_table(units, (*ARMS, DIAG)), "", "Runs:", A.runs_table(runs)]
    out["text"] = "\n".join(parts)
    return out


def section(result: dict, command: str, preset: dict) -> str:
    units = result["units"]
    n_units = {arm: len(u) for arm, u in units.items()}
    planned = len(preset["seeds"]) * preset["subjects"]
    partial = any(n < planned for n in n_units.values()) or len(n_units) < 9
    lines = [SECTION, "",
             f"Command: `{command}`; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time of this "
             f"call {result['seconds']:.0f} s (cached stages reused; the machine was shared). Compute in the cached "
             f"units so far: LoRA training {result['compute_s']['lora training']} s, probes "
             f"{result['compute_s']['sampling']} s (sums over runs and units, one thread each). Base: "
             f"{json.dumps(result['base'])}.", "",
             ("**Partial run**: " if partial else "") + "units per arm: "
             + ", ".join(f"{a} {n}" for a, n in n_units.items()) + f" (planned {planned} each).", "",
             "Gates:", "", A.gates_table(result["gates"], result["recreate"]), "",
             "Per-block diagnostic:", "", A.blocks_table(result["gates"]["blocks"]), "",
             "Rates per arm: mean [95 % bootstrap CI over subjects]; unreadable images count as failures.", "",
             A.rates_table(units, list(units)), "",
             "Claims: paired Δ per subject (mean over seeds), bootstrap CI over subjects, exact sign-flip p, Holm "
             "over all twelve; 'not testable' where a gate failed.", "",
             A.claims_table(result["claims"]), "",
             *([A.per_subject_text(result["per_subject"]), ""] if "per_subject" in result else []),
             *(["M3 with the block roles the diagnostic found, an extra row outside the Holm family:", "",
                A.claims_table(result["extra"], A.EXTRA), ""] if "extra" in result else []),
             f"LoRA runs (per run in bench/separation/results/{RUNS_CSV}):", "", A.runs_table(result["runs"]), ""]
    return "\n".join(lines)


def write_section(text: str, path: Path = REPO / "bench" / "RESULTS.md") -> None:
    from .__main__ import write_section as write

    write(text, path, SECTION)


if __name__ == "__main__":
    main()
