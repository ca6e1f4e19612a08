"""The separation benchmark (bench/separation) end to end at toy size: world, base model, classifiers, every
mode trained, exported, read back, applied and sampled through the pack's own code, and the table written.
Toy numbers mean nothing; the full run's numbers are in bench/RESULTS.md."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# appended, never first: the repo root holds folders named like ComfyUI's top-level modules (nodes)
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.separation import __main__ as bench  # noqa: E402
from bench.separation import report, world  # noqa: E402
from bench.separation.experiment import MODES  # noqa: E402


def test_world_factors_are_independent_and_prompts_encode():
    rgb, shapes, styles = world.batch([("star", "stripes"), ("star", "flat"), ("heart", "stripes")], 16, seed=0)
    assert rgb.shape == (3, 16, 16, 3) and 0 <= float(rgb.min()) and float(rgb.max()) <= 1
    assert shapes.tolist() == [3, 3, 5] and styles.tolist() == [0, 4, 0]
    # same seed, same images; the latent round-trips to the image
    again, _, _ = world.batch([("star", "stripes"), ("star", "flat"), ("heart", "stripes")], 16, seed=0)
    assert torch.equal(rgb, again)
    torch.testing.assert_close(world.to_rgb(world.to_latent(rgb)), rgb)
    assert not set(world.HELD_OUT) & set(world.TRAIN_PAIRS)
    assert len(world.TRAIN_PAIRS) + len(world.HELD_OUT) == len(world.SHAPES) * len(world.STYLES)
    enc = world.WordEncoder()
    tokens, pooled = enc.encode(world.prompt("star", "stripes", trigger=True))
    assert tokens.shape == (1, 8, 2048) and world.WordEncoder(tokens=77).encode("a star")[0].shape == (1, 77, 2048) and pooled.shape == (1, 1280)
    assert world.prompt("star", "stripes", trigger=True) == "a sks star in stripes style"
    try:
        enc.encode("a dog")
    except ValueError as e:
        assert "dog" in str(e)
    else:
        raise AssertionError("an unknown word must be refused")


def test_toy_run_produces_the_table(tmp_path):
    torch.set_num_threads(1)
    result = bench.run("toy", cache=tmp_path / "cache", log=lambda *a: None)
    lines = result["table"].splitlines()
    assert len(lines) == 2 + 1 + len(MODES)
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["base model, no LoRA", *MODES]
    for mode in MODES:
        kinds = {r["kind"] for r in result["records"][mode]}
        assert kinds == {"content alone", "style alone", "both", "crossed"}, mode
        for cells in report.summary({mode: result["records"][mode]})[mode].values():
            assert cells and all(0.0 <= v <= 1.0 for v in cells)
    assert (tmp_path / "cache" / "results_toy.json").is_file()
    # the section replaces itself and leaves other sections alone
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Other helper\n\nkeep me\n")
    text = bench.section_text(result, "python -m bench.separation --preset toy")
    bench.write_section(text, md)
    bench.write_section(text, md)
    out = md.read_text()
    assert out.count(bench.SECTION) == 1 and "keep me" in out and "| naive |" in out


# ------------------------------------------------------------------------------------------ the unnamed world


def test_unnamed_world_names_no_subject_factor():
    from bench.separation import cli_unnamed, unnamed

    for shape, style in unnamed.SUBJECTS:
        for text in (unnamed.caption(shape, style, True), unnamed.caption(shape, None, True), unnamed.caption(shape, style)):
            assert shape not in text and style not in text, text
    assert unnamed.caption("star", "noise", True) == "a sks shape in pattern style"
    assert unnamed.caption("circle", "noise") == "a circle in pattern style"
    assert not set(unnamed.UNNAMED_SHAPES + unnamed.UNNAMED_STYLES) & set(unnamed.encoder().vocab)
    for s in unnamed.SUBJECTS:  # the crossed pair shares neither factor with either training image
        p = unnamed.partner(s)
        assert p in unnamed.SUBJECTS and p[0] != s[0] and p[1] != s[1]
    first4 = cli_unnamed.subject_order(4)
    assert {s for s, _ in first4} == set(unnamed.UNNAMED_SHAPES) and {y for _, y in first4} == set(unnamed.UNNAMED_STYLES)
    assert sorted(cli_unnamed.subject_order(16)) == sorted(unnamed.SUBJECTS)
    assert not set(unnamed.HELD_OUT) & set(unnamed.TRAIN_PAIRS) and set(unnamed.SUBJECTS) <= set(unnamed.TRAIN_PAIRS)


def test_world_v6_weights_only_the_bases_draw_by_texture():
    from collections import Counter

    from bench.separation import unnamed

    # without weights the draw is the one v3's cached bases were trained on (pairs recorded before v6 existed)
    assert unnamed.random_pairs(6, seed=123, pairs=unnamed.TRAIN_PAIRS) == [
        ("circle", "dots"), ("bars", "rings"), ("ring", "grid"), ("circle", "rings"), ("tee", "checker"),
        ("square", "grid")]
    weights = unnamed.TRAIN_WEIGHTS_BY_VERSION[6]
    assert unnamed.VERSIONS[6] == unnamed.VERSIONS[3] and sum(weights.values()) == len(weights)
    drawn = Counter(y for _, y in unnamed.random_pairs(40_000, seed=5, pairs=unnamed.TRAIN_PAIRS, weights=weights))
    per_pair = {y: drawn[y] / sum(1 for _, t in unnamed.TRAIN_PAIRS if t == y) for y in unnamed.STYLES}
    flat = per_pair["stripes"]
    for y in unnamed.STYLES:  # each pair drawn in proportion to its texture's weight (named ones 1)
        assert abs(per_pair[y] / flat - weights.get(y, 1.0)) < 0.08, (y, per_pair[y] / flat)


def test_the_base_draws_its_training_pairs_with_the_worlds_weights(monkeypatch):
    from bench.separation import base, unnamed

    seen, draw = [], unnamed.random_pairs
    monkeypatch.setattr(unnamed, "random_pairs", lambda *a, **k: seen.append(k.get("weights")) or draw(*a, **k))
    monkeypatch.setattr(unnamed, "TRAIN_WEIGHTS", unnamed.TRAIN_WEIGHTS_BY_VERSION[6])
    torch.set_num_threads(1)
    cfg = base.BaseConfig(steps=2, batch=2, world="unnamed")
    base.train_base(cfg, unnamed.encoder(cfg.tokens), log=lambda *a: None)
    assert seen == [unnamed.TRAIN_WEIGHTS_BY_VERSION[6]] * 2


def _side(role, ups, rank=2, width=6, seed=0):
    from bench.separation.env import setup

    setup()
    from unziplora_pack.unziplora.lora_formats import LoRAState, LoRAWeights
    from unziplora_pack.unziplora.pair import PairSide

    g = torch.Generator().manual_seed(seed)
    state = LoRAState(source=f"{role}.safetensors")
    for path, rows in ups.items():
        up = torch.randn(width, rank, generator=g)
        up[rows:] = 0  # a mask baked into up keeps the first `rows` channels
        state[path] = LoRAWeights(torch.randn(rank, 5, generator=g), up, 0.5)
    return PairSide(role, state)


def test_controls_random_masks_keep_m3s_count_per_layer_and_average_is_the_mean_delta():
    import numpy as np

    from bench.separation import study

    paths = ("output_blocks.0.1.transformer_blocks.0.attn2.to_k", "input_blocks.4.1.transformer_blocks.0.attn1.to_q")
    naive = _side("content", dict.fromkeys(paths, 6), seed=1)
    m3 = _side("content", {paths[0]: 2, paths[1]: 5}, seed=2)
    masked = study.random_rows(naive, m3, np.random.default_rng(0))
    for path, kept in ((paths[0], 2), (paths[1], 5)):
        rows = masked.weights[path].up.abs().sum(1) > 0
        assert int(rows.sum()) == kept
        torch.testing.assert_close(masked.weights[path].up[rows], naive.weights[path].up[rows])  # kept rows untouched
    style = _side("style", dict.fromkeys(paths, 6), seed=3)
    avg = study.average_sides(naive, style)
    for path in paths:
        want = (naive.weights[path].delta() + style.weights[path].delta()) / 2
        torch.testing.assert_close(avg.weights[path].delta(), want)
    kept = study.kept_fractions(type("Handle", (), {"content": m3, "style": naive})())
    assert kept["content"]["all"] == (2 + 5) / 12 and kept["style"]["all"] == 1.0


def test_block_swap_patch_changes_only_the_conditional_rows_of_its_block():
    from bench.separation import gates

    swapped = torch.full((2, 3, 4), 7.0)
    patch = gates.swap_patch(("output", 1), swapped)
    ctx = torch.cat([torch.zeros(2, 3, 4), torch.ones(2, 3, 4)])  # rows: uncond chunk, cond chunk
    _, out, value = patch(None, ctx, ctx, {"block": ("output", 1), "cond_or_uncond": [1, 0]})
    assert torch.equal(out[:2], ctx[:2]) and torch.equal(out[2:], swapped) and value is out
    _, same, _ = patch(None, ctx, ctx, {"block": ("output", 0), "cond_or_uncond": [1, 0]})
    assert same is ctx
    try:  # a sampler that split the batch would make the swap miss rows silently: refused instead
        patch(None, ctx[:3], ctx[:3], {"block": ("output", 1), "cond_or_uncond": [1, 0]})
    except RuntimeError as e:
        assert "is not 2 x 2" in str(e)
    else:
        raise AssertionError("a split batch must be refused")
    assert gates.block_key("middle_block.1") == ("middle", 0) and gates.block_key("input_blocks.7.1") == ("input", 7)


def test_unnamed_toy_study_runs_the_whole_path_and_resumes(tmp_path):
    """World, base, classifiers, gates, every mode trained / exported / read back / applied / prompted, the three
    controls, the tables; then the same command again trains and samples nothing new."""
    from bench.separation import analysis, cli_unnamed, stats
    from bench.separation.study import ARMS

    torch.set_num_threads(1)
    args = ["--preset", "toy", "--cache", str(tmp_path / "cache")]
    result = cli_unnamed.main(args, log=lambda *a: None)
    units = result["units"]
    assert set(units) == set(ARMS) and all(len(u) == 2 for u in units.values())
    for arm_units in units.values():
        for m in arm_units.values():
            assert set(m) == {k for k, _, _ in analysis.METRICS} and all(0 <= v <= 1 for v in m.values())
    runs = result["runs"]
    assert {r["mode"] for r in runs} == {"naive", "prompt", "column", "unziplora", "blora"}
    assert all("final_loss" in r and 0 <= r["kept"]["content"]["all"] <= 1 for r in runs)
    # the loss curve in windows (toy: 2 steps -> 2 windows), so a diverging mode can be told from a flat one
    assert all(len(r["loss_curve"]) == 2 and all(v > 0 for v in r["loss_curve"]) for r in runs)
    assert {c for c in result["claims"]} == {c[0] for c in analysis.CLAIMS}
    assert all(r["verdict"] in stats.VERDICTS for r in result["claims"].values())
    for table in ("Gates:", "unnamed prior flat", "Claims:", "Rates:", "naive_randmask", "(none swapped)"):
        assert table in result["text"], table
    folder = Path(result["folder"])
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*.json")}
    again = cli_unnamed.main(args, log=lambda *a: None)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.json") if p in stamps} == stamps
    assert again["units"] == units
    # the extra row: M3 with block roles from the diagnostic trains with those roles (relaxed = every column kept)
    from bench.separation import presets_unnamed, study

    from unziplora_pack.unziplora.roles import MODES as PACK_MODES

    study.register_diag_mode({"output_blocks.1.1": "content", "output_blocks.0.1": "style"})
    try:
        s = study.Study(presets_unnamed.PRESETS["toy"], tmp_path / "cache", log=lambda *a: None)
        s.unit(study.DIAG, cli_unnamed.subject_order(1)[0], 0)
        kept = s.train(study.DIAG, cli_unnamed.subject_order(1)[0], 0)["kept"]
    finally:  # the pack's mode table is shared by every test in this process
        PACK_MODES.pop(study.DIAG, None)
    assert kept["content"]["output_blocks.1.1"] == 1.0 and kept["style"]["output_blocks.0.1"] == 1.0
    assert kept["content"]["output_blocks.0.1"] < 1.0 and kept["style"]["output_blocks.1.1"] < 1.0
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Other helper\n\nkeep me\n")
    text = cli_unnamed.section({**result, "seconds": 1.0}, "cmd", __import__(
        "bench.separation.presets_unnamed", fromlist=["PRESETS"]).PRESETS["toy"])
    cli_unnamed.write_section(text, md)
    cli_unnamed.write_section(text, md)
    out = md.read_text()
    assert out.count(cli_unnamed.SECTION) == 1 and "keep me" in out and "| C12 |" in out


def test_the_base_resumes_exactly_where_a_paused_chunk_stopped(tmp_path):
    """Chunked base training (base_chunk, the shared machine's way) gives the same weights as one straight run."""
    from bench.separation import base, unnamed

    torch.set_num_threads(1)
    cfg = base.BaseConfig(steps=3, batch=2, world="unnamed")
    enc = unnamed.encoder(cfg.tokens)
    straight, _ = base.load_or_train(cfg, enc, tmp_path / "a", log=lambda *a: None)
    chunks = 0
    while True:
        patcher, info = base.load_or_train(cfg, enc, tmp_path / "b", log=lambda *a: None, budget_s=0)
        chunks += 1
        if patcher is not None:
            break
    assert chunks == 3 and info["steps"] == 3  # paused after steps 1 and 2, finished on the third call
    a, b = straight.model.diffusion_model.state_dict(), patcher.model.diffusion_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "b").glob("*.resume.pt"))  # the resume state goes once the base is saved


def test_diagnostics_load_the_cached_base_and_redraw_from_a_given_image(tmp_path):
    """base.load_cached (handcheck, texture_loss, colour_drift) reads what load_or_train saved and names the command
    when nothing is there; experiment.sample redraws given images at denoise < 1 instead of sampling from noise."""
    import pytest

    from bench.separation import base, experiment, gates, unnamed

    torch.set_num_threads(1)
    cfg = base.BaseConfig(steps=2, batch=2, world="unnamed")
    trained, _ = base.load_or_train(cfg, unnamed.encoder(cfg.tokens), tmp_path, log=lambda *a: None)
    cached = base.load_cached(cfg, tmp_path)
    a, b = trained.model.diffusion_model.state_dict(), cached.model.diffusion_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit, match="base_chunk"):
        base.load_cached(cfg, tmp_path / "empty")

    rgb, _, _ = unnamed.batch([("ring", "slope"), ("tee", "grid")], cfg.size, seed=1)
    clip = experiment.WorldClip(unnamed.encoder(cfg.tokens), cfg.size)
    texts = ["a shape in pattern style"] * 2
    pos, neg = gates.conditioning_batch(clip, texts), gates.conditioning_batch(clip, [""] * 2)
    scfg = experiment.SampleConfig(steps=4, per_prompt=2)
    redrawn = experiment.sample(cached, pos, neg, cfg.size, scfg, 0, start=world.to_latent(rgb), denoise=0.05)
    free = experiment.sample(cached, pos, neg, cfg.size, scfg, 0)
    # a two-step base draws noise from scratch; at denoise 0.05 the redraw stays on the given images
    assert float((redrawn - rgb).abs().mean()) < 0.05 < float((free - rgb).abs().mean())
