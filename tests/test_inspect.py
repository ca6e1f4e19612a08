"""Inspect: the map's numbers and pixels follow the masks, mergers and factors of the pair."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pair_helpers import random_lora, save_lora
from unziplora_pack.unziplora import pair as pairs
from unziplora_pack.unziplora.inspect_map import pair_map, split_path
from unziplora_pack.unziplora.lora_formats import LoRAState, LoRAWeights
from unziplora_pack.unziplora.render import COLORS, MAP_W, MAP_X, _row_height, render_pair_map

BLOCKS = ["input_blocks.4.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1"]
LINEARS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
           "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
OUT = 96


def _synthetic_pair(with_masks=True, mode="unziplora"):
    """Content holds columns [0, 48), style [24, 96) in every linear: overlap [24, 48). In output_blocks.1.1 the
    content mask is empty. The style side's up rows are scaled x2 so its norms are known."""
    g = torch.Generator().manual_seed(0)
    sides = {}
    for role in ("content", "style"):
        state = LoRAState(f"{role}.safetensors", "kohya", {"unziplora.mode": mode})
        masks, mergers = {}, {}
        for block in BLOCKS:
            for lin in LINEARS:
                path = f"{block}.transformer_blocks.0.{lin}"
                down = torch.randn(4, 32, generator=g)
                up = torch.randn(OUT, 4, generator=g) * (2.0 if role == "style" else 1.0)
                mask = torch.zeros(OUT, dtype=torch.bool)
                if role == "content" and block != "output_blocks.1.1":
                    mask[:48] = True
                if role == "style":
                    mask[24:] = True
                state[path] = LoRAWeights(down, up * mask[:, None], scale=0.5)
                masks[path] = mask
                mergers[path] = torch.full((OUT,), 0.25 if role == "style" else 1.0)
        sides[role] = pairs.PairSide(role, state, mergers if with_masks else {}, masks if with_masks else {})
    return pairs.ContentStyleHandle("synthetic", sides["content"], sides["style"], kind="files",
                                    metadata={"unziplora.mode": mode})


def _pixel(img: np.ndarray, y: int, column: int) -> tuple:
    x = MAP_X + int((column + 0.5) * MAP_W / OUT)
    return tuple(int(v) for v in img[y, x])


def _block_top(pm, name: str) -> int:
    y = 150
    for b in pm.blocks:
        if b.block == name:
            return y
        y += _row_height(len(b.linears))[1] + 6
    raise KeyError(name)


def test_map_numbers_follow_the_masks():
    pm = pair_map(_synthetic_pair())
    assert [b.block for b in pm.blocks] == BLOCKS  # UNet order
    assert pm.has_masks and pm.mask_source == "bundle"
    roles = {b.block: b.role for b in pm.blocks}
    assert roles == {"input_blocks.4.1": "shared", "middle_block.1": "shared", "output_blocks.0.1": "content",
                     "output_blocks.1.1": "style"}
    shared = pm.block("input_blocks.4.1")
    assert shared.kept == {"content": pytest.approx(0.5), "style": pytest.approx(0.75)}
    assert shared.overlap == pytest.approx(0.25)
    assert shared.overlap_merger == {"content": pytest.approx(1.0), "style": pytest.approx(0.25)}
    assert pm.block("output_blocks.1.1").kept["content"] == 0 and pm.block("output_blocks.1.1").overlap == 0


def test_delta_norm_equals_the_dense_norm():
    handle = _synthetic_pair()
    pm = pair_map(handle)
    for b in pm.blocks:
        for role in ("content", "style"):
            side = getattr(handle, role)
            dense = [side.weights[lin.path].delta().norm() ** 2 for lin in b.linears]
            assert b.delta_norm[role] == pytest.approx(float(sum(dense)) ** 0.5, rel=1e-4)


def test_map_pixels_show_the_mask_pattern(tmp_path):
    pm = pair_map(_synthetic_pair())
    img = np.asarray(render_pair_map(pm))
    lh, _ = _row_height(8)
    for block in ("input_blocks.4.1", "output_blocks.0.1"):
        for i in range(8):  # every linear's line
            y = _block_top(pm, block) + i * lh + lh // 2
            assert _pixel(img, y, 10) == COLORS["content"]
            assert _pixel(img, y, 36) == COLORS["both"]
            assert _pixel(img, y, 70) == COLORS["style"]
    y = _block_top(pm, "output_blocks.1.1") + lh // 2
    assert _pixel(img, y, 10) == COLORS["none"] and _pixel(img, y, 36) == COLORS["style"]


def test_without_masks_the_map_shows_delta_norms():
    pm = pair_map(_synthetic_pair(with_masks=False, mode="naive"))
    assert not pm.has_masks and pm.mask_source == ""
    b = pm.block("input_blocks.4.1")
    assert b.kept == {} and b.overlap is None and set(b.delta_norm) == {"content", "style"}
    img = np.asarray(render_pair_map(pm))
    y = _block_top(pm, "input_blocks.4.1") + 1
    left, right = _pixel(img, y, 5), _pixel(img, y, 80)
    # columns 0-23: only content has a delta (orange-ish, no blue); 48-95: only style (blue dominates)
    assert left[0] > left[2] and right[2] > right[0]


def test_trained_run_from_bundle_and_from_files_agree(tiny_sdxl, tmp_path):
    lora = random_lora(tiny_sdxl, seed=5)
    saved = save_lora(lora, tmp_path, "run")
    from_bundle = pair_map(pairs.from_bundle(saved.bundle))
    from_files = pair_map(pairs.from_files(saved.content, saved.style))  # no bundle: masks read from lora_up
    assert from_bundle.mask_source == "bundle" and from_files.mask_source == "lora_up"
    assert [b.block for b in from_bundle.blocks][0] == "input_blocks.4.1"
    assert [b.block for b in from_bundle.blocks][-1] == "output_blocks.5.1"
    for a, b in zip(from_bundle.blocks, from_files.blocks):
        assert a.block == b.block and a.role == b.role
        assert a.kept == pytest.approx(b.kept) and a.overlap == pytest.approx(b.overlap)
    # a content block: the content LoRA takes every column there
    assert from_bundle.block("output_blocks.0.1").kept["content"] == 1.0
    assert 0 < from_bundle.block("output_blocks.1.1").kept["content"] < 1


def test_blora_pair_shows_norms_on_its_two_blocks(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    sd = {}
    for block in ("output_blocks.0.1", "output_blocks.1.1"):
        for lin in LINEARS:
            key = "lora_unet_" + f"{block}.transformer_blocks.0.{lin}".replace(".", "_")
            sd[key + ".lora_down.weight"] = torch.randn(4, 1280, generator=g)
            sd[key + ".lora_up.weight"] = torch.randn(1280, 4, generator=g)
    # attn2 k/v read the 2048-wide text states
    for block in ("output_blocks.0.1", "output_blocks.1.1"):
        for lin in ("attn2.to_k", "attn2.to_v"):
            key = "lora_unet_" + f"{block}.transformer_blocks.0.{lin}".replace(".", "_")
            sd[key + ".lora_down.weight"] = torch.randn(4, 2048, generator=g)
    path = os.path.join(tmp_path, "blora.safetensors")
    save_file(sd, path)
    pm = pair_map(pairs.from_blora(path))
    assert pm.mode == "blora" and not pm.has_masks
    assert [(b.block, b.role, sorted(b.delta_norm)) for b in pm.blocks] == [
        ("output_blocks.0.1", "content", ["content"]), ("output_blocks.1.1", "style", ["style"])]
    render_pair_map(pm)  # one-sided blocks render


def test_split_path_names_the_bad_path():
    assert split_path("output_blocks.1.1.transformer_blocks.3.attn2.to_k") == ("output_blocks.1.1", 3, "attn2", "to_k")
    with pytest.raises(ValueError, match="proj_in"):
        split_path("output_blocks.1.1.proj_in")


def test_node_returns_image_and_summary(tmp_path, monkeypatch):
    import folder_paths

    from unziplora_pack.nodes.inspect import UnZipLoRAInspect

    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path))
    out = UnZipLoRAInspect.execute(_synthetic_pair())
    image, summary = out.args
    assert image.shape[0] == 1 and image.shape[-1] == 3 and image.shape[2] == 1200
    assert "output_blocks.1.1" in summary and "style" in summary
    save = os.environ.get("UNZIPLORA_SAVE_INSPECT")
    if save:  # for looking at it: UNZIPLORA_SAVE_INSPECT=/tmp/inspect.png
        from PIL import Image

        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(save)


@pytest.mark.parametrize("module, name", [("inspect", "UnZipLoRAInspect"), ("score", "UnZipLoRAScore")])
def test_schema_tooltips_help_page_and_registration(pack, module, name):
    import asyncio
    import importlib
    from pathlib import Path

    cls = getattr(importlib.import_module(f"unziplora_pack.nodes.{module}"), name)
    schema = cls.GET_SCHEMA()
    assert schema.node_id == name and schema.category.startswith("UnZipLoRA/")
    assert all(i.tooltip for i in schema.inputs + schema.outputs), name
    assert all(o.display_name or o.id for o in schema.outputs)
    page = Path(pack.__file__).parent / "web" / "docs" / f"{name}.md"
    text = page.read_text(encoding="utf-8")
    for i in schema.inputs + schema.outputs:
        assert f"`{i.id}`" in text, f"{page.name} does not document {i.id}"

    from unziplora_pack.nodes import UnZipLoRAExtension

    # the extension's list, not comfy_entrypoint(): that also registers routes, which needs a server
    assert name in [c.__name__ for c in asyncio.run(UnZipLoRAExtension().get_node_list())]
