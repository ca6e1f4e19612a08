"""Tiny SDXL-shaped models built in-process for fast unit tests.

Same block names as SDXL (attention in input_blocks 4, 5, 7, 8, middle_block 1 and output_blocks 0-5, one
transformer block each), tiny widths, real conditioning shapes (77 x 2048 tokens, 1280 pooled).
"""

from __future__ import annotations

import torch

TINY_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "model_channels": 64,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 1, 1, 1, 1],
    "channel_mult": [1, 2, 2],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 32,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


def init_weights_(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """ComfyUI's ops skip initialisation: give every parameter a defined, seeded value."""
    g = torch.Generator().manual_seed(seed)
    # by module type, not name: ResBlock's GroupNorms are "in_layers.0" / "out_layers.0" and the UNet's last
    # one "out.0"; a zero scale there zeroes the whole UNet output
    norms = {f"{n}.{k}" if n else k for n, m in module.named_modules()
             if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) for k in ("weight", "bias")}
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and (name in norms or "norm" in name or name.endswith("ln.weight")):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif p.ndim == 1:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def build_tiny_sdxl(seed: int = 0, dtype=torch.float32):
    """A ModelPatcher around comfy.model_base.SDXL with the tiny config and seeded random weights."""
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL(dict(TINY_UNET_CONFIG))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    init_weights_(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def random_conditioning(seed: int, tokens: int = 77, batch: int = 1):
    """(cross-attn tokens [B, tokens, 2048], pooled [B, 1280]) with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, 2048, generator=g), torch.randn(batch, 1280, generator=g)
