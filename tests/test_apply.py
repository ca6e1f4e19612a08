"""Using trained pairs: one side = ComfyUI's stock LoRA loader, both = the training forward, crossing two runs adds
A's content and B's style, conditioning nodes compose with the streams, K/V deltas are computed once per run."""

from __future__ import annotations

import copy

import pytest
import torch
from comfy_server import starve_sampler_memory
from pair_helpers import random_lora, save_lora
from tiny_models import random_conditioning

from unziplora_pack.nodes.prompts import UnZipLoRAPrompts, resolve_prompts
from unziplora_pack.unziplora import kv_patch
from unziplora_pack.unziplora import pair as pairs
from unziplora_pack.unziplora.apply import InferenceDual, apply_pair
from unziplora_pack.unziplora.targets import find_targets


@pytest.fixture(autouse=True)
def _unload():
    yield
    import comfy.model_management

    comfy.model_management.unload_all_models()


@pytest.fixture
def run_a(tiny_sdxl, tmp_path):
    lora = random_lora(tiny_sdxl, 1)
    return lora, save_lora(lora, tmp_path, "a")


def _conds(seed, tokens=77):
    ctx, pooled = random_conditioning(seed, tokens)
    return [[ctx, {"pooled_output": pooled, "width": 1024, "height": 1024}]]


def _stream(seed, tokens=77):
    return random_conditioning(seed, tokens)[0]


def _sample(model, positive, negative, cfg=1.0, steps=1, seed=0, size=8):
    import comfy.sample

    lat = torch.zeros(1, 4, size, size)
    noise = comfy.sample.prepare_noise(lat, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, lat,
                               disable_pbar=True, seed=seed)


def _unet_io(model, positive):
    """(x, timesteps, context, y, eps) of the one UNet call of a 1-step, cfg-1 sample: the raw UNet output."""
    import comfy.patcher_extension

    records = []

    def spy(executor, x, timesteps, context, y, *args, **kwargs):
        out = executor(x, timesteps, context, y, *args, **kwargs)
        records.append((x, timesteps, context, y, out))
        return out

    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    _sample(m, positive, _conds(99))
    (rec,) = records
    return rec


def _patched_weights(model, paths):
    import comfy.model_management

    comfy.model_management.unload_all_models()  # a model loaded by sampling keeps the shared UNet patched
    model.patch_model()
    try:
        unet = model.model.diffusion_model
        return {p: unet.get_submodule(p).weight.detach().clone() for p in paths}
    finally:
        model.unpatch_model()


def test_one_side_is_exactly_the_stock_lora_loader(tiny_sdxl, run_a):
    import comfy.sd
    import comfy.utils

    _, saved = run_a
    handle = pairs.from_bundle(saved.bundle)
    paths = [t.path for t in find_targets(tiny_sdxl)]
    base = {p: tiny_sdxl.model.diffusion_model.get_submodule(p).weight.detach().clone() for p in paths}
    for role, file, strength in (("content", saved.content, 1.0), ("style", saved.style, 1.0),
                                 ("style", saved.style, 0.7)):
        sd = comfy.utils.load_torch_file(file, safe_load=True)
        stock, _ = comfy.sd.load_lora_for_models(tiny_sdxl, None, sd, strength, 0)
        ours = apply_pair(tiny_sdxl, handle, None, role, content_strength=strength, style_strength=strength)
        w_stock, w_ours = _patched_weights(stock, paths), _patched_weights(ours, paths)
        assert all(torch.equal(w_stock[p], w_ours[p]) for p in paths), role
        assert sum(not torch.equal(w_ours[p], base[p]) for p in paths) == 88
        if strength == 1.0:
            out_stock, out_ours = _unet_io(stock, _conds(1))[-1], _unet_io(ours, _conds(1))[-1]
            err = float((out_stock - out_ours).abs().max())
            print(f"{role}: max |stock - ours| = {err:.2e}, output scale {float(out_ours.abs().max()):.2e}")
            assert err <= 1e-5


def test_both_equals_the_training_forward(tiny_sdxl, run_a):
    lora, saved = run_a
    handle = pairs.from_bundle(saved.bundle)
    xc, xs = _stream(11), _stream(12)
    positive = kv_patch.with_streams(_conds(1), xc, xs)
    x, t, context, y, eps = _unet_io(apply_pair(tiny_sdxl, handle, mode="both"), positive)

    import comfy.model_management

    comfy.model_management.unload_all_models()  # the shared UNet gets its own weights back before it is copied
    unet = copy.deepcopy(tiny_sdxl.model.diffusion_model)
    lora.attach(unet)
    with torch.no_grad():
        ref = kv_patch.predict_eps(unet, lora, x, t, context, y, xc, xs, pytorch_attention=False)
        unseparated = kv_patch.predict_eps(unet, lora, x, t, context, y, pytorch_attention=False)
    err = float((eps - ref).abs().max())
    print(f"max |apply(both) - training forward| = {err:.2e}, output scale {float(ref.abs().max()):.2e}")
    assert err <= 1e-5
    assert float((eps - unseparated).abs().max()) > 1e-3  # the three streams really reach K/V


def test_crossing_two_runs_adds_a_content_and_b_style(tiny_sdxl, run_a, tmp_path):
    lora_a, saved_a = run_a
    lora_b = random_lora(tiny_sdxl, 2)
    saved_b = save_lora(lora_b, tmp_path, "b")
    a, b = pairs.from_bundle(saved_a.bundle), pairs.from_bundle(saved_b.bundle)
    sc, ss = 0.6, 1.3
    patched = apply_pair(tiny_sdxl, a, b, "both", content_strength=sc, style_strength=ss)
    targets = find_targets(tiny_sdxl)
    before = _patched_weights(tiny_sdxl, [t.path for t in targets])
    after = _patched_weights(patched, [t.path for t in targets])
    worst = 0.0
    for t in targets:
        if t.is_cross_kv:  # live in the replace patch, never in the weights
            assert torch.equal(after[t.path], before[t.path]), t.path
            continue
        fc, fs = lora_a.dual(t.path).content, lora_b.dual(t.path).style
        expected = (sc * fc.column_scale(True)[:, None] * (fc.up @ fc.down)
                    + ss * fs.column_scale(True)[:, None] * (fs.up @ fs.down))
        worst = max(worst, float((after[t.path] - before[t.path] - expected.detach()).abs().max()))
    assert worst <= 1e-5, worst

    slots = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    kv = [t for t in targets if t.is_cross_kv]
    assert len(slots) == 11 and len(kv) == 22
    x, xc, xs = _stream(1), _stream(2), _stream(3)
    with torch.no_grad():
        for t in kv:
            dual = getattr(slots[t.transformer_key], t.projection)
            expected = (sc * lora_a.dual(t.path).content.delta(xc, True)
                        + ss * lora_b.dual(t.path).style.delta(xs, True))
            assert float((dual.delta(x, xc, xs) - expected).abs().max()) <= 1e-5, t.path


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_conditioning_nodes_compose_and_deltas_are_cached(tiny_sdxl, run_a, monkeypatch):
    import comfy.patcher_extension
    import comfy.samplers
    import nodes

    _, saved = run_a
    patched = apply_pair(tiny_sdxl, pairs.from_bundle(saved.bundle), mode="both")
    p1 = kv_patch.with_streams(_conds(1), _stream(11), _stream(12))
    p2 = kv_patch.with_streams(_conds(2, 154), _stream(21), _stream(22, 154))  # a long prompt: 2 chunks
    negative = kv_patch.with_zero_streams(_conds(3))
    (combined,) = nodes.ConditioningCombine().combine(p1, p2)
    (area1,) = nodes.ConditioningSetArea().append(p1, 32, 32, 0, 0, 1.0)  # pixels: 4 x 4 of the 8 x 8 latent
    (area2,) = nodes.ConditioningSetArea().append(p2, 32, 32, 32, 32, 1.0)
    (areas,) = nodes.ConditioningCombine().combine(area1, area2)
    (concat,) = nodes.ConditioningConcat().concat(p1, _conds(4))
    # what Concat should mean: the appended tokens are read by both LoRAs like the combined prompt (no separation)
    x4 = _conds(4)[0][0]
    concat_ref = kv_patch.with_streams([[torch.cat([p1[0][0], x4], 1), p1[0][1]]], torch.cat([_stream(11), x4], 1),
                                       torch.cat([_stream(12), x4], 1))
    (concat_mixed,) = nodes.ConditioningCombine().combine(concat, p2)  # 154 tokens with 77-token streams + a long one

    forwards, deltas = [], []
    spy_m = patched.clone()
    spy_m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_spy",
                               lambda ex, x, *a, **k: forwards.append(x.shape[0]) or ex(x, *a, **k))
    real_delta = InferenceDual.delta
    monkeypatch.setattr(InferenceDual, "delta", lambda self, *a: deltas.append(1) or real_delta(self, *a))

    def sample(model, positive, steps=1):
        return _sample(model, positive, negative, cfg=3.0, steps=steps)

    results = {"combine": sample(spy_m, combined, steps=2)}
    assert forwards == [3, 3]  # both entries and uncond in one batch at each step
    assert len(deltas) == 22  # the 22 attn2 K/V deltas once for the whole run, not once per step
    for name, positive in (("areas", areas), ("concat", concat), ("concat_mixed", concat_mixed)):
        results[name] = sample(patched, positive)
    starve_sampler_memory(monkeypatch)
    forwards.clear()
    split = {"combine": sample(spy_m, combined, steps=2)}
    assert forwards == [1, 1, 1] * 2
    for name, positive in (("areas", areas), ("concat_mixed", concat_mixed)):
        split[name] = sample(patched, positive)
    split["concat"] = sample(patched, concat_ref)
    for name, ref in split.items():
        print(f"{name}: relative difference batched vs separate {_rel(results[name], ref):.1e}")
        assert _rel(results[name], ref) <= 1e-5, name


class _FakeClip:
    """CLIP stand-in: 77 tokens per 75 words, values fixed by the text."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        chunks = max(1, -(-len(text.split()) // 75))
        g = torch.Generator().manual_seed(sum(map(ord, text)) + 7)
        return [[torch.randn(1, 77 * chunks, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]


def test_prompts_node_fills_from_pairs_and_pads_long_prompts(run_a):
    _, saved = run_a
    handle = pairs.from_bundle(saved.bundle)
    assert resolve_prompts("", "", "", handle) == {"combined": "A sks cat in sketch style", "content": "A sks cat",
                                                   "style": "A cat in sketch style"}
    assert resolve_prompts("", "a sks cat on a skateboard", "a cat on a skateboard in sketch style", handle) == {
        "combined": "A sks cat in sketch style", "content": "a sks cat on a skateboard",
        "style": "a cat on a skateboard in sketch style"}
    other = copy.deepcopy(handle)
    other.style.prompt = "A dog in watercolor style"
    assert resolve_prompts("", "", "", handle, other)["combined"] == "A sks cat in watercolor style"
    plain = copy.deepcopy(handle)
    plain.content.separated = plain.style.separated = False  # e.g. a B-LoRA: its LoRAs read the combined prompt
    assert resolve_prompts("a cat", "", "", plain) == {"combined": "a cat", "content": "", "style": ""}

    clip = _FakeClip()
    long_prompt = " ".join(["word"] * 100)  # two chunks: 154 tokens
    positive, negative = UnZipLoRAPrompts.execute(clip, long_prompt, "", "", "blurry", handle).args
    (x, opts), = positive
    conds = opts["model_conds"]
    assert x.shape == (1, 154, 2048) and torch.equal(opts["pooled_output"], clip.encode_from_tokens_scheduled(
        long_prompt)[0][1]["pooled_output"])
    content = clip.encode_from_tokens_scheduled("A sks cat")[0][0]
    assert torch.equal(conds[kv_patch.CONTENT_COND].cond, torch.cat([content, torch.zeros_like(content)], 1))
    assert torch.equal(conds[kv_patch.KEY_COND].cond, x)
    (nx, nopts), = negative
    assert not nopts["model_conds"][kv_patch.STYLE_COND].cond.any() and nx.shape == (1, 77, 2048)
    with pytest.raises(ValueError, match="content prompt has 154 tokens but the combined prompt has 77"):
        UnZipLoRAPrompts.execute(clip, "short", long_prompt, "", "", None)
