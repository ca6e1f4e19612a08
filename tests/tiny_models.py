"""Tiny SDXL-shaped models built in-process for fast unit tests.

Same block names as SDXL (attention in input_blocks 4, 5, 7, 8, middle_block 1 and output_blocks 0-5, one
transformer block each), tiny widths, real conditioning shapes (77 x 2048 tokens, 1280 pooled).
"""

from __future__ import annotations

import torch

from comfy_server import _tiny_sdxl_module

# one definition of every UNet config the tests build: scripts/tiny_sdxl.py (SDXL base, the tiny checkpoint, this)
TINY_UNET_CONFIG = dict(_tiny_sdxl_module().TEST_UNET_CONFIG)


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


# Depth layouts of the SDXL family that keeps SDXL's block names (comfy/model_detection.py, the SSD_1B,
# Segmind_Vega, KOALA_700M and KOALA_1B configs), for the tiny widths. transformer_depth_output is read from its end
# (output_blocks.0 first); middle -1 = a ResBlock only, -2 = no middle block at all.
FAMILY_DEPTHS = {
    "ssd1b": dict(transformer_depth=[0, 0, 2, 2, 4, 4], transformer_depth_output=[0, 0, 0, 1, 1, 2, 10, 4, 4],
                  transformer_depth_middle=-1),
    "vega": dict(transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
                 transformer_depth_middle=-1),
    "koala700m": dict(num_res_blocks=[1, 1, 1], transformer_depth=[0, 2, 5], transformer_depth_output=[0, 0, 2, 2, 5, 5],
                      transformer_depth_middle=-2),
    "koala1b": dict(num_res_blocks=[1, 1, 1], transformer_depth=[0, 2, 6], transformer_depth_output=[0, 0, 2, 2, 6, 6],
                    transformer_depth_middle=6),
}


def tiny_config(**changes) -> dict:
    """TINY_UNET_CONFIG with other depths (FAMILY_DEPTHS[...] or any layout)."""
    return dict(TINY_UNET_CONFIG, **changes)


def build_tiny_sdxl(seed: int = 0, dtype=torch.float32, unet_config: dict | None = None, prediction: str = "eps",
                    zsnr: bool = False):
    """A ModelPatcher around comfy.model_base.SDXL with the tiny config and seeded random weights.

    prediction "v" / zsnr: built the way ComfyUI's loader builds a checkpoint carrying the "v_pred" / "ztsnr" keys
    (NoobAI v-pred and other zero-terminal-SNR finetunes).
    """
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL(dict(unet_config or TINY_UNET_CONFIG))
    config.set_inference_dtype(dtype, None)
    markers = {}
    if prediction == "v":
        markers["v_pred"] = torch.tensor([])
        if zsnr:
            markers["ztsnr"] = torch.tensor([])
    elif prediction != "eps" or zsnr:
        raise ValueError(f"tiny SDXL: prediction eps or v (zsnr only with v), got {prediction!r} zsnr={zsnr}")
    model = config.get_model(markers)
    init_weights_(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def random_conditioning(seed: int, tokens: int = 77, batch: int = 1):
    """(cross-attn tokens [B, tokens, 2048], pooled [B, 1280]) with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, 2048, generator=g), torch.randn(batch, 1280, generator=g)


def tiny_training_parts(patcher, latent_hw=(10, 12), size: int = 64) -> dict:
    """The pieces of a tiny training run, fixed seeds: {streams, posteriors, adm} (prompt streams from
    random_conditioning 1, 2, 3; latent mean from seed 4, std 0.1; SDXL's adm for a size x size image)."""
    from unziplora_pack.training.data import LatentPosteriors, PromptStreams

    x, pooled = random_conditioning(1)
    x_c, _ = random_conditioning(2)
    x_s, _ = random_conditioning(3)
    g = torch.Generator().manual_seed(4)
    h, w = latent_hw
    posteriors = LatentPosteriors(torch.randn(1, 4, h, w, generator=g), torch.full((1, 4, h, w), 0.1))
    adm = patcher.model.encode_adm(pooled_output=pooled, width=size, height=size, crop_w=0, crop_h=0,
                                   target_width=size, target_height=size).detach()
    return {"streams": PromptStreams(x, x_c, x_s, pooled), "posteriors": posteriors, "adm": adm}
