"""ColumnSchedule on the real thing in small: ContentStyleLoRA attached to the tiny SDXL UNet."""

from __future__ import annotations

import torch

from unziplora_pack.unziplora.columns import columns_per_round
from unziplora_pack.unziplora.schedule import ColumnSchedule, orth_loss


def test_schedule_drives_the_tiny_sdxl(tiny_sdxl):
    """Integration: ContentStyleLoRA on the tiny UNet, three prompt streams, two full rounds (S = 6, t = 3)."""
    from tiny_models import random_conditioning

    from unziplora_pack.unziplora.content_style import ContentStyleLoRA
    from unziplora_pack.unziplora.kv_patch import predict_eps, sdxl_y

    base = tiny_sdxl.model
    unet = base.diffusion_model
    unet.requires_grad_(False)
    lora = ContentStyleLoRA(tiny_sdxl, "unziplora", rank=4, seed=0)
    lora.attach(unet)
    context, pooled = random_conditioning(0)
    content, _ = random_conditioning(1)
    style, _ = random_conditioning(2)
    y = sdxl_y(base, pooled)
    groups = lora.parameter_groups()
    opt = torch.optim.AdamW([{"params": groups["content"] + groups["style"], "lr": 5e-5},
                             {"params": groups["mergers"], "lr": 5e-3}], weight_decay=1e-4)
    sched = ColumnSchedule(lora, 6, sample_times=2)
    gen = torch.Generator().manual_seed(0)
    actions, picks = [], []
    try:
        for g in range(6):
            latent = torch.randn(1, 4, 8, 8, generator=gen)
            noise = torch.randn(1, 4, 8, 8, generator=gen)
            eps = predict_eps(unet, lora, latent, torch.tensor([500.0]), context, y, content, style)
            loss = torch.nn.functional.mse_loss(eps, noise)
            if sched.orth_active:
                loss = loss + orth_loss(lora)
            loss.backward()
            actions.append(sched.before_optimizer_step(g))
            if actions[-1] == "select":
                picks.append({key: idx.clone() for key, idx in sched.last_picks.items()})
                for path, block, dual in lora.items():
                    if lora.mode.style_avoids_content(block):
                        assert not (dual.content.mask[picks[-1][(path, "style")]] > 0).any(), path
            opt.step()
            sched.after_optimizer_step()
            opt.zero_grad(set_to_none=True)
        sched.finish()
    finally:
        lora.detach()
    assert actions == ["reset", "select", "overlap_only"] * 2
    assert lora.masks_on
    roles_seen = set()
    for path, block, dual in lora.items():
        for name, side in dual.sides():
            roles_seen.add((lora.mode.role(block), name, side.mask_mode))
            k = columns_per_round(side.mask.numel(), 0.1)
            if side.mask_mode == "relaxed":
                assert not side.mask.any() and all((path, name) not in p for p in picks)
                continue
            assert all(p[(path, name)].numel() == k for p in picks), (path, name)
            assert k <= int(side.mask.sum()) <= 2 * k, (path, name)
            assert ((side.merger >= 0) & (side.merger <= 1)).all()
    assert {("shared", "style", "masked"), ("content", "content", "relaxed"), ("style", "style", "relaxed")} <= roles_seen
