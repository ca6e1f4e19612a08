"""ContentStyleLoRA: targets, parameter counts, the factored dual delta against method.md's dense formula,
stream isolation, training attachment (hooks + K/V patch) against merged weights, gradient checkpointing."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from test_checkpointing_mode import is_checkpointing
from tiny_models import random_conditioning

from comfy_server import _tiny_sdxl_module

from unziplora_pack.unziplora import checkpointing, content_style, kv_patch, targets
from unziplora_pack.unziplora.roles import get_mode

REAL_SDXL = dict(_tiny_sdxl_module().FULL_UNET_CONFIG)


def per_block(width: int, rank: int) -> int:
    """Factors of one LoRA on one transformer block: q/out of both attentions and attn1 k/v are width x width,
    attn2 k/v 2048 -> width; each linear holds A (r x in) + B (out x r)."""
    return 6 * rank * (width + width) + 2 * rank * (2048 + width)


def randomise(lora, seed=0, masks=True):
    """Non-trivial mergers and masks, masks on; B non-zero (gaussian init already)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, _, dual in lora.items():
            for _, f in dual.sides():
                f.merger.copy_(torch.rand(f.merger.shape, generator=g))
                f.mask.copy_((torch.rand(f.mask.shape, generator=g) < 0.4).float())
    lora.set_masks_on(masks)


def dense_delta(dual, side):
    f = getattr(dual, side)
    scale = f.merger * f.mask if (dual.masks_on and f.mask_mode == "masked") else f.merger
    return (scale[:, None] * (f.up.double() @ f.down.double()))


@pytest.fixture
def lora_tiny(tiny_sdxl):
    lora = content_style.ContentStyleLoRA(tiny_sdxl, "unziplora", rank=8, seed=1)
    randomise(lora)
    return lora


def test_targets_match_comfy_patch_keys(tiny_sdxl):
    recs = targets.find_targets(tiny_sdxl)
    assert len(recs) == 88 and len({t.block for t in recs}) == 11
    kv = [r for r in recs if r.is_cross_kv]
    assert len(kv) == 22 and all(r.in_features == 2048 for r in kv)
    assert {r.block for r in recs if r.transformer_key == ("middle", 0, 0)} == {"middle_block.1"}
    # every record's key is the one ComfyUI's UNet asks for at run time, each exactly once
    seen = []

    def spy(key):
        def patch(q, k, v, extra):
            seen.append(key)
            import comfy.ldm.modules.attention as attention
            return attention.optimized_attention(q, k, v, extra["n_heads"], transformer_options=extra)
        return patch

    keys = {r.transformer_key for r in recs}
    unet = tiny_sdxl.model.diffusion_model
    ctx, pooled = random_conditioning(0)
    with torch.no_grad():
        unet(torch.randn(1, 4, 16, 16), torch.tensor([10.0]), context=ctx, y=kv_patch.sdxl_y(tiny_sdxl.model, pooled),
             transformer_options={"patches_replace": {"attn2": {k: spy(k) for k in keys}}})
    assert sorted(seen) == sorted(keys)


def test_parameter_counts_real_sdxl_and_tiny(tiny_sdxl):
    import comfy.supported_models

    model = comfy.supported_models.SDXL(dict(REAL_SDXL)).get_model({}, device=torch.device("meta"))
    recs = targets.find_targets(model)
    assert len(recs) == 560 and len({t.block for t in recs}) == 11
    assert sum(r.is_cross_kv for r in recs) == 140
    widths = {r.block: r.out_features for r in recs}
    assert {b for b, w in widths.items() if w == 640} == {"input_blocks.4.1", "input_blocks.5.1", "output_blocks.3.1",
                                                          "output_blocks.4.1", "output_blocks.5.1"}
    with torch.device("meta"):
        lora = content_style.ContentStyleLoRA(recs, "unziplora", rank=64)
        blora = content_style.ContentStyleLoRA(recs, "blora", rank=64)
    # 10 transformer blocks at width 640 (4.1, 5.1: 2 each; out 3.1-5.1: 2 each), 60 at 1280
    expected = 10 * per_block(640, 64) + 60 * per_block(1280, 64)
    assert expected == 92_897_280
    assert lora.num_parameters("content") == lora.num_parameters("style") == expected
    assert lora.num_linears("content") == lora.num_linears("style") == 560
    assert lora.num_parameters(mergers=True) == 2 * expected + 2 * (10 * 8 * 640 + 60 * 8 * 1280)
    # B-LoRA: one LoRA per block, output_blocks.0.1 (content) and output_blocks.1.1 (style), 10 blocks each
    assert blora.num_parameters("content") == blora.num_parameters("style") == 10 * per_block(1280, 64)
    assert blora.blocks() == ["output_blocks.0.1", "output_blocks.1.1"]

    tiny = content_style.ContentStyleLoRA(tiny_sdxl, "unziplora", rank=64, seed=0)
    assert tiny.num_parameters("content") == 11 * per_block(128, 64) == 4_145_152
    assert tiny.num_linears() == 88


def test_init_modes_and_groups(tiny_sdxl):
    a = content_style.ContentStyleLoRA(tiny_sdxl, "unziplora", rank=4, seed=3)
    b = content_style.ContentStyleLoRA(tiny_sdxl, "unziplora", rank=4, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    f = a.dual("input_blocks.4.1.transformer_blocks.0.attn1.to_q").content
    assert f.up.abs().sum() > 0 and abs(f.up.std().item() - 1 / 4) < 0.1  # B gaussian, not zero
    assert a.dual("output_blocks.0.1.transformer_blocks.0.attn1.to_q").content.mask_mode == "relaxed"
    groups = a.parameter_groups()
    assert len(groups["content"]) == len(groups["style"]) == 2 * 88 and len(groups["mergers"]) == 2 * 88
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(a.parameters()))
    blora = content_style.ContentStyleLoRA(tiny_sdxl, get_mode("blora"), rank=4)
    assert all(f.up.abs().sum() == 0 for _, f in blora._sides())
    assert blora.parameter_groups()["mergers"] == []  # no column separation: mergers fixed at 1


def test_factored_equals_dense_formula(tiny_sdxl, lora_tiny):
    """y = W0 x + (m_c M_c).(B_c A_c x_c) + (m_s M_s).(B_s A_s x_s), shared and content blocks, K/V and not."""
    unet = copy.deepcopy(tiny_sdxl.model.diffusion_model)
    g = torch.Generator().manual_seed(5)
    for block in ("input_blocks.4.1", "output_blocks.0.1"):
        kv_path = f"{block}.transformer_blocks.0.attn2.to_k"
        dual = lora_tiny.dual(kv_path)
        x, xc, xs = (torch.randn(2, 7, 2048, generator=g) for _ in range(3))
        w0 = unet.get_submodule(kv_path).weight.double()
        got = unet.get_submodule(kv_path)(x) + dual(x, xc, xs)
        ref = x.double() @ w0.T + xc.double() @ dense_delta(dual, "content").T + xs.double() @ dense_delta(dual, "style").T
        assert ((got.double() - ref).norm() / ref.norm()).item() < 1e-5

    lora_tiny.attach(unet)
    path = "output_blocks.0.1.transformer_blocks.0.attn1.to_out.0"
    lin, dual = unet.get_submodule(path), lora_tiny.dual(path)
    x = torch.randn(2, 9, 128, generator=g)
    w = lin.weight.double() + dense_delta(dual, "content") + dense_delta(dual, "style")
    ref = x.double() @ w.T + lin.bias.double()
    assert ((lin(x).double() - ref).norm() / ref.norm()).item() < 1e-5
    lora_tiny.detach()
    assert torch.equal(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))


def _spy_inputs(monkeypatch, lora):
    """Record the input each LoRA side reads, per linear (x_c / x_s default to x: DualLoRA.delta's contract)."""
    seen = {}
    for path, _, dual in lora.items():
        orig = dual.delta

        def delta(x, x_c=None, x_s=None, _orig=orig, _path=path, _dual=dual):
            for name, _ in _dual.sides():
                stream = x_c if name == "content" else x_s
                seen[_path, name] = x if stream is None else stream
            return _orig(x, x_c, x_s)
        monkeypatch.setattr(dual, "delta", delta)
    return seen


def test_streams_reach_only_their_lora(tiny_sdxl, lora_tiny, monkeypatch):
    unet = copy.deepcopy(tiny_sdxl.model.diffusion_model)
    lora_tiny.attach(unet)
    ctx, pooled = random_conditioning(0)
    xc, xs = random_conditioning(1)[0], random_conditioning(2)[0]
    y = kv_patch.sdxl_y(tiny_sdxl.model, pooled)
    lat = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    inputs = {}
    for path in lora_tiny.targets:
        unet.get_submodule(path).register_forward_pre_hook(lambda m, a, _p=path: inputs.__setitem__(_p, a[0]))
    seen = _spy_inputs(monkeypatch, lora_tiny)
    with torch.no_grad():
        kv_patch.predict_eps(unet, lora_tiny, lat, torch.tensor([500]), ctx, y, xc, xs)
    assert len(seen) == 2 * 88
    for path, t in lora_tiny.targets.items():
        if t.is_cross_kv:
            assert torch.equal(seen[path, "content"], xc) and torch.equal(seen[path, "style"], xs)
            assert torch.equal(inputs[path], ctx)  # W0 reads the combined prompt
        else:  # attn1 and attn2 Q/out: both LoRAs see the image tokens the base linear sees
            assert seen[path, "content"] is seen[path, "style"]
            assert torch.equal(seen[path, "content"], inputs[path])
    monkeypatch.undo()

    # a zero content stream gives every attn2 K/V content factor exactly zero gradient, although x and
    # x_s are not zero: the content K/V LoRA learns from p_c only (and style from p_s only)
    for zero in ("content", "style"):
        lora_tiny.zero_grad(set_to_none=True)
        streams = {"content": xc, "style": xs, zero: torch.zeros_like(xc)}
        eps = kv_patch.predict_eps(unet, lora_tiny, lat, torch.tensor([500]), ctx, y, streams["content"],
                                   streams["style"])
        eps.square().mean().backward()
        other = "style" if zero == "content" else "content"
        for path, t in lora_tiny.targets.items():
            d = lora_tiny.dual(path)
            grads = [getattr(d, zero).down.grad, getattr(d, zero).up.grad]
            if t.is_cross_kv:
                assert all(gr is None or gr.abs().max() == 0 for gr in grads), path
                assert getattr(d, other).down.grad.abs().max() > 0
            else:
                assert grads[0].abs().max() > 0, path


def _unet_inputs(tiny_sdxl, tokens=77):
    ctx, pooled = random_conditioning(0, tokens)
    lat = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    return lat, torch.tensor([321.0]), ctx, kv_patch.sdxl_y(tiny_sdxl.model, pooled)


def test_attached_unet_zero_up_is_base_bitwise_and_detach_restores(tiny_sdxl, lora_tiny):
    unet = copy.deepcopy(tiny_sdxl.model.diffusion_model)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    lat, t, ctx, y = _unet_inputs(tiny_sdxl)
    with torch.no_grad():
        base = unet(lat, t, context=ctx, y=y)
        for _, f in lora_tiny._sides():
            f.up.zero_()
        lora_tiny.attach(unet)
        xc, xs = random_conditioning(1)[0], random_conditioning(2)[0]
        out = kv_patch.predict_eps(unet, lora_tiny, lat, t, ctx, y, xc, xs, pytorch_attention=False)
        assert torch.equal(out, base)
        lora_tiny.detach()
        assert not lora_tiny.is_attached_to(unet)
        assert torch.equal(unet(lat, t, context=ctx, y=y), base)
    after = unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_equal_streams_equal_merged_weights(tiny_sdxl, lora_tiny):
    """x_c = x_s = x: the attached model is the base model with (m M).(B A) added to every weight."""
    unet = copy.deepcopy(tiny_sdxl.model.diffusion_model)
    merged = copy.deepcopy(unet)
    with torch.no_grad():
        for path, _, dual in lora_tiny.items():
            w = merged.get_submodule(path).weight
            w.copy_((w.double() + dense_delta(dual, "content") + dense_delta(dual, "style")).float())
    lat, t, ctx, y = _unet_inputs(tiny_sdxl)
    lora_tiny.attach(unet)
    with torch.no_grad():
        ref = merged(lat, t, context=ctx, y=y)
        base = unet(lat, t, context=ctx, y=y, transformer_options={})  # hooks only: no K/V LoRA
        for streams in ((None, None), (ctx, ctx)):
            out = kv_patch.predict_eps(unet, lora_tiny, lat, t, ctx, y, *streams, pytorch_attention=False)
            assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    assert ((base - ref).norm() / ref.norm()).item() > 1e-3  # the K/V LoRA matters, so the test can fail


def test_gradient_checkpointing_same_gradients(tiny_sdxl, lora_tiny):
    unet = copy.deepcopy(tiny_sdxl.model.diffusion_model)
    lora_tiny.attach(unet)
    lat, t, ctx, y = _unet_inputs(tiny_sdxl)
    xc, xs = random_conditioning(1)[0], random_conditioning(2)[0]
    grads, outs = [], []
    # per-linear factors formed in each forward, and the training step's grouped step factors (step_factors.py)
    for prepared in (False, True):
        for ckpt in (False, True):
            (checkpointing.enable_checkpointing if ckpt else checkpointing.disable_checkpointing)(unet)
            assert is_checkpointing(unet) == ckpt
            lora_tiny.zero_grad(set_to_none=True)
            with lora_tiny.step_factors("cpu", torch.float32) if prepared else contextlib.nullcontext():
                eps = kv_patch.predict_eps(unet, lora_tiny, lat, t, ctx, y, xc, xs)
                eps.square().mean().backward()
            outs.append(eps.detach())
            grads.append([p.grad.clone() for p in lora_tiny.parameters() if p.grad is not None])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[2], outs[3])
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-5, atol=1e-6)
    assert len(grads[0]) == len(grads[1]) == len(grads[2]) == len(grads[3]) > 0
    for other in grads[1:]:
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(grads[0], other))
    # paths and types are unchanged while checkpointing, and everything is restored afterwards
    checkpointing.enable_checkpointing(unet)
    assert targets.find_targets(unet) == targets.find_targets(tiny_sdxl)
    assert checkpointing.disable_checkpointing(unet) == 33 and not is_checkpointing(unet)
