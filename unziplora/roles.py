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

from dataclasses import dataclass, field, replace

# B-LoRA's finding extended by UnZipLoRA, by place (targets.AttnTarget.place: side, decoder level, index; index None =
# every block of the level). The authors name these blocks the diffusers way (up_blocks.0.attentions.0 carries content,
# up_blocks.0.attentions.1 style), which is what stays true of models with SDXL's naming but other depths.
UNZIPLORA_PLACE_ROLES: dict[tuple, str] = {
    ("up", 0, 0): "content",
    ("up", 0, 2): "content",
    ("up", 0, 1): "style",
    ("up", 1, None): "style",
}
BLORA_PLACES = {("up", 0, 0): "content", ("up", 0, 1): "style"}

# The same on SDXL's own layout (LDM names), what a preset holds until for_targets() reads a model. The decoder's
# first level always starts at output_blocks.0, so B-LoRA's two blocks have these names on every model of the family.
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


def _lookup(rules: dict, place: tuple):
    if not place:
        return None
    return rules.get(place, rules.get((place[0], place[1], None)))


def _place_name(place: tuple) -> str:
    """'output_blocks.1.1 (up_blocks.0.attentions.1)' where the LDM name follows from the place alone."""
    side, level, index = place
    diffusers = "mid_block.attentions.0" if side == "mid" else (
        f"{side}_blocks.{level}.attentions" + ("" if index is None else f".{index}"))
    if side == "up" and level == 0:
        return f"output_blocks.{index}.1 ({diffusers})"
    return diffusers


@dataclass(frozen=True)
class ModePreset:
    name: str
    prompt_separation: bool  # content/style LoRAs read their own prompts in attn2 K/V
    column_separation: bool  # hard masks, mergers, L_orth, the selection schedule
    block_roles: dict = field(default_factory=dict)  # block -> role; blocks not named are "shared"
    init: str = "gaussian"
    only_blocks: dict | None = None  # B-LoRA: block -> the one side it carries; other blocks get no LoRA
    place_roles: dict = field(default_factory=dict)  # what for_targets() derives block_roles from
    only_places: dict | None = None  # what for_targets() derives only_blocks from

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

    def for_targets(self, targets) -> "ModePreset":
        """This mode on the model the targets (targets.find_targets) come from: block roles from each block's place.

        ValueError naming the mode and the block when the model lacks what the mode needs: each of B-LoRA's two
        blocks; for block separation, at least one content block and one style block.
        """
        places = {t.block: t.place for t in targets}
        if self.only_places is not None:
            only = {b: side for b, p in places.items() if (side := _lookup(self.only_places, p)) is not None}
            for place, side in self.only_places.items():
                if place not in places.values():
                    raise ValueError(f"mode {self.name!r} trains the {side} LoRA in {_place_name(place)}, which this "
                                     f"model has no transformer in; its attention blocks are {_listing(places)}. "
                                     "Use another mode (unziplora, column, prompt, naive)")
            return replace(self, only_blocks=only)
        if not self.place_roles:
            return self
        roles = {b: role for b, p in places.items() if (role := _lookup(self.place_roles, p)) is not None}
        if self.column_separation:
            for role in ("content", "style"):
                if role not in roles.values():
                    wanted = " or ".join(_place_name(p) for p, r in self.place_roles.items() if r == role)
                    raise ValueError(f"mode {self.name!r} needs a {role} block ({wanted}) and this model has none; "
                                     f"its attention blocks are {_listing(places)}. Use mode column (no block roles)")
        return replace(self, block_roles=roles)


def _listing(places: dict) -> str:
    return ", ".join(places) or "none"


MODES: dict[str, ModePreset] = {
    "unziplora": ModePreset("unziplora", True, True, dict(UNZIPLORA_BLOCK_ROLES),
                            place_roles=dict(UNZIPLORA_PLACE_ROLES)),
    "column": ModePreset("column", True, True),
    "prompt": ModePreset("prompt", True, False),
    "naive": ModePreset("naive", False, False),
    "blora": ModePreset("blora", False, False, init="zero_up", only_blocks=dict(BLORA_BLOCKS),
                        only_places=dict(BLORA_PLACES)),
}


def get_mode(name: str) -> ModePreset:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {name!r}") from None
