"""Models with SDXL's block names but other depths (SSD-1B, Segmind Vega, KOALA; layouts from ComfyUI's
model_detection, tiny widths): roles by the block's place in the decoder, training runs, and a mode whose blocks are
missing fails naming the mode and the block."""

from __future__ import annotations

import pytest
import torch

from tiny_models import FAMILY_DEPTHS, build_tiny_sdxl, random_conditioning, tiny_config
from unziplora_pack.unziplora import content_style, kv_patch
from unziplora_pack.unziplora.roles import MODES, UNZIPLORA_BLOCK_ROLES
from unziplora_pack.unziplora.targets import find_targets

SDXL_ROLES = dict(UNZIPLORA_BLOCK_ROLES)
# KOALA's decoder has two blocks per level: output_blocks.2.1 / 3.1 are the second level (up_blocks.1), the style
# level, where SDXL has its third first-level block (a content block)
KOALA_ROLES = {"output_blocks.0.1": "content", "output_blocks.1.1": "style", "output_blocks.2.1": "style",
               "output_blocks.3.1": "style"}
EXPECTED = {
    "ssd1b": (SDXL_ROLES, {"input_blocks.4.1", "input_blocks.5.1", "input_blocks.7.1", "input_blocks.8.1"}),
    "vega": (SDXL_ROLES, {"input_blocks.4.1", "input_blocks.5.1", "input_blocks.7.1", "input_blocks.8.1"}),
    "koala700m": (KOALA_ROLES, {"input_blocks.3.1", "input_blocks.5.1"}),
    "koala1b": (KOALA_ROLES, {"input_blocks.3.1", "input_blocks.5.1", "middle_block.1"}),
}


@pytest.fixture(scope="module")
def family():
    return {name: build_tiny_sdxl(seed=1, unet_config=tiny_config(**d)) for name, d in FAMILY_DEPTHS.items()}


@pytest.mark.parametrize("name", list(FAMILY_DEPTHS))
def test_roles_come_from_the_decoder_level(family, name):
    roles, shared = EXPECTED[name]
    lora = content_style.ContentStyleLoRA(family[name], "unziplora", rank=2, seed=0)
    assert set(lora.blocks()) == set(roles) | shared
    assert {b: lora.mode.role(b) for b in lora.blocks()} == {**roles, **dict.fromkeys(shared, "shared")}
    for path, block, dual in lora.items():  # what the role means for each side's mask
        want = {"content": ("relaxed", "masked"), "style": ("masked", "relaxed")}.get(roles.get(block),
                                                                                     ("masked", "masked"))
        assert (dual.content.mask_mode, dual.style.mask_mode) == want, path
    blora = content_style.ContentStyleLoRA(family[name], "blora", rank=2)
    assert {b: ("content" if d.content is not None else "style") for _, b, d in blora.items()} == {
        "output_blocks.0.1": "content", "output_blocks.1.1": "style"}


@pytest.mark.parametrize("name", ["ssd1b", "koala700m"])
def test_training_forward_reaches_every_block(family, name):
    """No middle transformer (SSD-1B) or no middle block at all (KOALA-700M): every transformer block's K/V patch
    runs, and the LoRA changes the output."""
    model = family[name]
    unet = model.model.diffusion_model
    lora = content_style.ContentStyleLoRA(model, "unziplora", rank=2, seed=0)
    ctx, pooled = random_conditioning(0)
    y = kv_patch.sdxl_y(model.model, pooled)
    hit = set()

    def spy(key, patch):
        def run(q, k, v, extra):
            hit.add(key)
            return patch(q, k, v, extra)
        return run

    lat = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = unet(lat, torch.tensor([500.0]), context=ctx, y=y)
        lora.attach(unet)
        try:
            xc = random_conditioning(1)[0]
            options = kv_patch.training_transformer_options(lora, ctx, xc, xc)
            options["patches_replace"]["attn2"] = {k: spy(k, p) for k, p in options["patches_replace"]["attn2"].items()}
            out = unet(lat, torch.tensor([500.0]), context=ctx, y=y, transformer_options=options)
        finally:
            lora.detach()
    assert hit == {t.transformer_key for t in find_targets(model)}
    assert torch.isfinite(out).all() and not torch.allclose(out, plain)


def test_blora_without_its_style_block_names_mode_and_block():
    # output_blocks.1 without a transformer (depths are read from the end: output_blocks.0 first)
    model = build_tiny_sdxl(unet_config=tiny_config(transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 0, 1]))
    assert "output_blocks.1.1" not in {t.block for t in find_targets(model)}
    with pytest.raises(ValueError, match=r"mode 'blora' trains the style LoRA in output_blocks\.1\.1 "
                                         r"\(up_blocks\.0\.attentions\.1\), which this model has no transformer in"):
        content_style.ContentStyleLoRA(model, "blora", rank=2)
    content_style.ContentStyleLoRA(model, "unziplora", rank=2)  # style still has output_blocks.3.1-5.1

    from unziplora_pack.training.config import TrainConfig
    from unziplora_pack.training.prepare import prepare_inputs

    # the node's prompt fails before a job exists (and before the missing clip / vae are even looked at)
    with pytest.raises(ValueError, match=r"mode 'blora' .*output_blocks\.1\.1"):
        prepare_inputs(model, None, None, torch.zeros(1, 64, 64, 3), "p", "c", "s",
                       TrainConfig(mode="blora", steps=2, sample_times=1, resolution=64))


def test_block_separation_without_content_blocks_names_them():
    model = build_tiny_sdxl(unet_config=tiny_config(transformer_depth_output=[0, 0, 0, 1, 1, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match=r"mode 'unziplora' needs a content block \(output_blocks\.0\.1 "
                                         r"\(up_blocks\.0\.attentions\.0\) or output_blocks\.2\.1 .*has none"):
        MODES["unziplora"].for_targets(find_targets(model))
    assert MODES["column"].for_targets(find_targets(model)) == MODES["column"]  # no roles, nothing missing
