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
