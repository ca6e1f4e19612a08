"""UnZipLoRA Inspect: a picture of what each LoRA of a pair took, per block and per linear."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..unziplora.inspect_map import SIDES, pair_map
from ..unziplora.render import render_pair_map, to_image_tensor
from .loaders import PairType
from .validate import check_pair, plain_errors, queue_check


def summary_text(pm) -> str:
    """One line per block, for logs and text nodes: what the image shows, in numbers."""
    lines = [f"{pm.name} [{pm.kind}] mode={pm.mode or '?'} masks={pm.mask_source or 'none'}"]
    lines += [f"  ! {p}" for p in pm.problems]
    for b in pm.blocks:
        parts = [f"{b.block:<20} {b.role or '?':<8}"]
        if pm.has_masks:
            parts.append("kept " + " / ".join(f"{100 * b.kept.get(s, 0):.0f}%" for s in SIDES)
                         + f" overlap {100 * (b.overlap or 0):.0f}%")
        parts.append("|BA| " + " / ".join(f"{b.delta_norm[s]:.4g}" if s in b.delta_norm else "-" for s in SIDES))
        if b.overlap_merger:
            parts.append("merger on overlap " + " / ".join(f"{b.overlap_merger.get(s, 1):.2f}" for s in SIDES))
        lines.append("  ".join(parts))
    return "\n".join(lines)


class UnZipLoRAInspect(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UnZipLoRAInspect",
            display_name="UnZipLoRA Inspect",
            category="UnZipLoRA/inspect",
            description="Shows what each LoRA of a pair took: per block (UNet order, with its role) and per linear, "
                        "the output columns held by the content mask, the style mask, both, and the mergers; per "
                        "block the kept fractions and the delta norm ||BA|| of each side. Pairs without masks "
                        "(B-LoRA, plain LoRA files) show delta norms only.",
            is_output_node=True,
            inputs=[
                PairType.Input("pair", tooltip="A pair from UnZipLoRA Loader (masks from the run's bundle), Load LoRA "
                                               "Pair (any two files) or Load B-LoRA."),
            ],
            outputs=[
                io.Image.Output("map", display_name="map",
                                tooltip="The decomposition as a picture, with a legend (also shown on the node)."),
                io.String.Output("summary", display_name="summary",
                                 tooltip="The per-block numbers as text: role, kept fractions, overlap, "
                                         "||BA|| of each side, mergers on the overlap."),
            ],
        )

    @classmethod
    def validate_inputs(cls, pair=None):
        return queue_check(cls, locals())

    @classmethod
    @plain_errors
    def execute(cls, pair) -> io.NodeOutput:
        check_pair("pair", pair)
        pm = pair_map(pair)
        if not pm.blocks:
            raise ValueError(f"pair: {pair.name} has no attention LoRA layers to show")
        image = to_image_tensor(render_pair_map(pm))
        return io.NodeOutput(image, summary_text(pm), ui=ui.PreviewImage(image, cls=cls))
