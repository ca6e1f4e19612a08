"""UnZipLoRA Apply: a content / style pair onto a model, one side alone or both with prompt separation."""

from __future__ import annotations

from comfy_api.latest import io

from ..unziplora.apply import APPLY_MODES, apply_pair
from .loaders import PairType
from .validate import check_inputs, check_pair, plain_errors, queue_check


class UnZipLoRAApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UnZipLoRAApply",
            display_name="UnZipLoRA Apply",
            category="UnZipLoRA/patch",
            description="content / style: that LoRA alone, exactly like LoraLoaderModelOnly (use a normal prompt). "
                        "both: content and style together with their mergers; give it UnZipLoRA Prompts so each LoRA "
                        "reads its own prompt in cross-attention.",
            inputs=[
                io.Model.Input("model", tooltip="An SDXL-architecture model (the base the LoRAs were trained on)."),
                io.Combo.Input("mode", options=list(APPLY_MODES), default="both",
                               tooltip="both: recreate or recombine (content + style, three prompts). content: the "
                                       "subject in new styles and scenes. style: the style on new subjects."),
                PairType.Input("content_from", tooltip="The pair whose content LoRA is used."),
                PairType.Input("style_from", optional=True,
                               tooltip="The pair whose style LoRA is used (another image's run to cross them). "
                                       "Not connected: the style of content_from."),
                io.Float.Input("content_strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Multiplies the content LoRA (1 = as trained)."),
                io.Float.Input("style_strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Multiplies the style LoRA (1 = as trained)."),
            ],
            outputs=[io.Model.Output("patched_model", display_name="model",
                                     tooltip="The patched model; the input model is left unchanged.")],
        )

    @classmethod
    def validate_inputs(cls, mode=None, content_from=None, style_from=None):
        return queue_check(cls, locals())

    @classmethod
    @plain_errors
    def execute(cls, model, mode, content_from, content_strength, style_strength, style_from=None) -> io.NodeOutput:
        check_inputs(cls, locals())
        check_pair("content_from", content_from)
        check_pair("style_from", style_from, optional=True)
        return io.NodeOutput(apply_pair(model, content_from, style_from, mode, content_strength, style_strength))
