"""The attention linears a dual LoRA sits on, read off a ComfyUI SDXL UNet rather than hard-coded.

Every BasicTransformerBlock inside a SpatialTransformer of input_blocks / middle_block / output_blocks
contributes attn1 and attn2 {to_q, to_k, to_v, to_out.0} (method.md: 70 blocks x 8 = 560 on SDXL).
Each record also carries the key ComfyUI uses for attention replace patches in that transformer block, and the
block's place in the UNet as diffusers names it (up_blocks.L.attentions.i): the SDXL family (SSD-1B, Vega, KOALA)
shares SDXL's LDM names but not its depths, so an LDM index means a different place there (KOALA's
output_blocks.2.1 is on the second decoder level, SDXL's on the first); roles.py keys on places.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ATTENTIONS = ("attn1", "attn2")
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
# (UNetModel attribute, the name ComfyUI puts in transformer_options["block"])
_SEQUENCES = (("input_blocks", "input"), ("middle_block", "middle"), ("output_blocks", "output"))


@dataclass(frozen=True)
class AttnTarget:
    path: str  # LDM module path, e.g. "input_blocks.4.1.transformer_blocks.0.attn2.to_k"
    block: str  # the SpatialTransformer, e.g. "input_blocks.4.1" (what roles.py keys on)
    transformer_key: tuple  # ("input", 4, 0): ComfyUI's patches_replace key for this transformer block
    attention: str  # "attn1" | "attn2"
    projection: str  # "to_q" | "to_k" | "to_v" | "to_out.0"
    in_features: int
    out_features: int
    place: tuple = ()  # ("down" | "mid" | "up", level, index in level), e.g. ("up", 0, 1) = up_blocks.0.attentions.1

    @property
    def is_cross_kv(self) -> bool:
        """attn2 K/V: the only linears whose content/style inputs differ from the base input."""
        return self.attention == "attn2" and self.projection in ("to_k", "to_v")

    @property
    def weight_key(self) -> str:
        """The weight's key in BaseModel.state_dict() (what ModelPatcher.add_patches takes)."""
        return f"diffusion_model.{self.path}.weight"


def unet_of(model) -> nn.Module:
    """The UNetModel inside a ModelPatcher, a BaseModel or the UNet itself."""
    if hasattr(model, "model") and hasattr(model.model, "diffusion_model"):
        model = model.model
    return getattr(model, "diffusion_model", model)


def _spatial_transformer_cls():
    from comfy.ldm.modules.attention import SpatialTransformer

    return SpatialTransformer


def _places(unet, attr: str) -> dict[int, tuple]:
    """Block number -> (side, level, index) for input_blocks / output_blocks: a level ends with its down/upsampler
    (an input block of its own; the last output block of the level), input_blocks.0 is the stem convolution."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, Upsample

    side = "down" if attr == "input_blocks" else "up"
    out, level, index = {}, 0, 0
    for n, block in enumerate(getattr(unet, attr, None) or ()):
        layers = list(block)
        if any(isinstance(m, ResBlock) for m in layers):
            out[n] = (side, level, index)
            index += 1
        if any(isinstance(m, (Downsample, Upsample)) for m in layers):
            level, index = level + 1, 0
    return out


def find_targets(model) -> list[AttnTarget]:
    """All attention linears of the UNet's spatial transformers, in forward order of the blocks."""
    unet = unet_of(model)
    spatial = _spatial_transformer_cls()
    places = {"input": _places(unet, "input_blocks"), "output": _places(unet, "output_blocks")}
    out: list[AttnTarget] = []
    seen_keys: dict[tuple, str] = {}
    for attr, kind in _SEQUENCES:
        seq = getattr(unet, attr, None)
        if seq is None:
            continue
        # middle_block is one TimestepEmbedSequential; ComfyUI sets block = ("middle", 0) for all of it
        numbered = [(0, seq, attr)] if kind == "middle" else [(n, b, f"{attr}.{n}") for n, b in enumerate(seq)]
        for number, container, prefix in numbered:
            for j, layer in enumerate(container):
                if not isinstance(layer, spatial):
                    continue
                block = f"{prefix}.{j}"
                place = ("mid", 0, 0) if kind == "middle" else places[kind].get(number, ())
                for i, tb in enumerate(layer.transformer_blocks):
                    key = (kind, number, i)
                    if key in seen_keys:  # two transformers in one block would share ComfyUI's patch key
                        raise ValueError(f"{block} and {seen_keys[key]} map to the same patch key {key}")
                    seen_keys[key] = block
                    for attn_name in ATTENTIONS:
                        attn = getattr(tb, attn_name, None)
                        if attn is None:
                            continue
                        for proj in PROJECTIONS:
                            lin = attn.get_submodule(proj)
                            out.append(AttnTarget(
                                path=f"{block}.transformer_blocks.{i}.{attn_name}.{proj}", block=block,
                                transformer_key=key, attention=attn_name, projection=proj,
                                in_features=lin.in_features, out_features=lin.out_features, place=place))
    if not out:
        raise ValueError("no SpatialTransformer attention found: is this an SDXL-style UNet?")
    return out


def kv_slots(targets: dict, dual_of) -> dict[tuple, dict]:
    """ComfyUI transformer key -> {"to_k": dual, "to_v": dual} over the attn2 K/V targets (path -> AttnTarget),
    for the K/V patches; dual_of(path) gives the layer's dual LoRA (trainable or loaded from files)."""
    slots: dict[tuple, dict] = {}
    for path, t in targets.items():
        if t.is_cross_kv:
            slots.setdefault(t.transformer_key, {})[t.projection] = dual_of(path)
    return slots
