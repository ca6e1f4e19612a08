"""Block roles and the paper's modes, as data.

A block is named by its SpatialTransformer's LDM path ("input_blocks.4.1", "middle_block.1",
"output_blocks.0.1"). Its role says how each LoRA's columns are handled there:

    shared   both LoRAs masked; the content LoRA chooses first, style may not take content's columns
    content  content LoRA uses all columns ("relaxed"), style LoRA masked
    style    style LoRA uses all columns, content LoRA masked

Modes (method.md "Ablations"): unziplora = M3 (prompt + column + block separation), column = M2,
prompt = M1, naive = DreamBooth-LoRA baseline, blora = B-LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# B-LoRA's finding extended by UnZipLoRA: output_blocks.0.1 carries content, output_blocks.1.1 style.
UNZIPLORA_BLOCK_ROLES: dict[str, str] = {
    "output_blocks.0.1": "content",
    "output_blocks.2.1": "content",
    "output_blocks.1.1": "style",
    "output_blocks.3.1": "style",
    "output_blocks.4.1": "style",
    "output_blocks.5.1": "style",
}
BLORA_BLOCKS = {"output_blocks.0.1": "content", "output_blocks.1.1": "style"}

# (content mask mode, style mask mode) per role; None = that LoRA is absent from the block
_ROLE_SIDES = {
    "shared": ("masked", "masked"),
    "content": ("relaxed", "masked"),
    "style": ("masked", "relaxed"),
}


@dataclass(frozen=True)
class ModePreset:
    name: str
    prompt_separation: bool  # content/style LoRAs read their own prompts in attn2 K/V
    column_separation: bool  # hard masks, mergers, L_orth, the selection schedule
    block_roles: dict = field(default_factory=dict)  # block -> role; blocks not named are "shared"
    init: str = "gaussian"
    only_blocks: dict | None = None  # B-LoRA: block -> the one side it carries; other blocks get no LoRA

    def role(self, block: str) -> str:
        return self.block_roles.get(block, "shared")

    def sides_for_block(self, block: str) -> tuple[str | None, str | None]:
        """(content mask mode, style mask mode) for a block; None where that LoRA is absent."""
        if self.only_blocks is not None:
            side = self.only_blocks.get(block)
            return ("off" if side == "content" else None, "off" if side == "style" else None)
        if not self.column_separation:
            return ("off", "off")
        return _ROLE_SIDES[self.role(block)]

    def style_avoids_content(self, block: str) -> bool:
        """In shared blocks the style pick may not take columns the content mask holds."""
        return self.column_separation and self.role(block) == "shared"


MODES: dict[str, ModePreset] = {
    "unziplora": ModePreset("unziplora", True, True, dict(UNZIPLORA_BLOCK_ROLES)),
    "column": ModePreset("column", True, True),
    "prompt": ModePreset("prompt", True, False),
    "naive": ModePreset("naive", False, False),
    "blora": ModePreset("blora", False, False, init="zero_up", only_blocks=dict(BLORA_BLOCKS)),
}


def get_mode(name: str) -> ModePreset:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {name!r}") from None
