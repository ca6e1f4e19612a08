"""UnZipLoRA Prompts: the combined, content and style prompts as one CONDITIONING for UnZipLoRA Apply (both)."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..training.data import tokenize_bounded
from ..unziplora.kv_patch import with_streams, with_zero_streams
from .loaders import PairType
from .train import build_combined_prompt
from .validate import check_inputs, check_pair, plain_errors, queue_check

log = logging.getLogger("unziplora")

# what an empty negative prompt becomes (the unconditional branch of CFG)
EMPTY_NEGATIVE = {
    "encode": "CLIP's encoding of the empty prompt, zero content / style streams",
    "zeros": "all zero: tokens, pooled vector and streams (the authors' diffusers pipeline)",
}


def _encode(clip, text: str, input_name: str):
    if clip is None:
        raise RuntimeError("UnZipLoRA Prompts: the clip input is None (does the checkpoint have text encoders?)")
    return clip.encode_from_tokens_scheduled(tokenize_bounded(clip, text, input_name))


def resolve_prompts(combined: str, content: str, style: str, content_from=None, style_from=None) -> dict:
    """The three prompts actually encoded. Typed text always wins; empty fields come from the pairs.

    A stream left empty (and not trained with prompt separation) is the combined prompt itself: that LoRA then
    reads the combined prompt, as an ordinary LoRA does. The combined prompt defaults to the run's own (one pair)
    or to content + style ('A sks cat' + 'A dog in sketch style' -> 'A sks cat in sketch style').
    """
    style_from = style_from or content_from
    out = {"content": content.strip(), "style": style.strip()}
    for role, handle in (("content", content_from), ("style", style_from)):
        side = None if handle is None else getattr(handle, role)
        if not out[role] and side is not None and side.separated:
            out[role] = side.prompt or side.trigger
    combined = combined.strip()
    if not combined and content_from is not None and content_from is style_from:
        combined = content_from.prompt
    if not combined and out["content"] and out["style"]:
        combined = build_combined_prompt(out["content"], out["style"])
    out["combined"] = combined or out["content"] or out["style"]
    return out


class UnZipLoRAPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UnZipLoRAPrompts",
            display_name="UnZipLoRA Prompts",
            category="UnZipLoRA/conditioning",
            description="Encodes the combined prompt (what the model sees) plus the content and style prompts (what "
                        "each LoRA sees in cross-attention). Use with UnZipLoRA Apply in 'both' mode. Works with "
                        "Conditioning Combine / Set Area / Concat and prompts longer than 77 tokens.",
            inputs=[
                io.Clip.Input("clip", tooltip="The model's CLIP."),
                io.String.Input("prompt", default="", multiline=True, dynamic_prompts=True,
                                tooltip="Combined prompt: subject and style together, e.g. 'a sks cat on a skateboard "
                                        "in sketch style'. Empty: the run's prompt, or content + style."),
                io.String.Input("content_prompt", default="", multiline=True, dynamic_prompts=True,
                                tooltip="What the content LoRA reads, e.g. 'a sks cat on a skateboard'. Empty: the "
                                        "content pair's trained prompt (or the combined prompt for plain LoRAs)."),
                io.String.Input("style_prompt", default="", multiline=True, dynamic_prompts=True,
                                tooltip="What the style LoRA reads, e.g. 'a cat on a skateboard in sketch style'. "
                                        "Empty: the style pair's trained prompt (or the combined prompt)."),
                io.String.Input("negative_prompt", default="", multiline=True, dynamic_prompts=True,
                                tooltip="Negative prompt. Its content and style streams are zero, as in the paper."),
                io.Combo.Input("empty_negative", options=list(EMPTY_NEGATIVE), default="encode", optional=True,
                               tooltip="What an empty negative prompt is. encode (default): CLIP's encoding of the "
                                       "empty prompt, as CLIP Text Encode gives it, with zero content / style streams. "
                                       "zeros: the authors' pipeline: tokens, pooled vector and streams all zero. "
                                       "A negative prompt with text is always encoded."),
                PairType.Input("content_from", optional=True,
                               tooltip="Optional: the pair whose prompts fill empty content / combined fields."),
                PairType.Input("style_from", optional=True,
                               tooltip="Optional: the pair whose prompts fill an empty style field (default: "
                                       "content_from)."),
            ],
            outputs=[
                io.Conditioning.Output("positive", display_name="positive",
                                       tooltip="Combined prompt carrying the content and style streams."),
                io.Conditioning.Output("negative", display_name="negative",
                                       tooltip="Negative prompt with zero content and style streams (all zero if "
                                               "empty and empty_negative is zeros)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, prompt=None, content_prompt=None, style_prompt=None, negative_prompt=None,
                        empty_negative=None, content_from=None, style_from=None):
        return queue_check(cls, locals())

    @classmethod
    @plain_errors
    def execute(cls, clip, prompt, content_prompt, style_prompt, negative_prompt, content_from=None,
                style_from=None, empty_negative="encode") -> io.NodeOutput:
        check_inputs(cls, {k: v for k, v in locals().items() if k not in ("cls", "clip")})
        check_pair("content_from", content_from, optional=True)
        check_pair("style_from", style_from, optional=True)
        used = resolve_prompts(prompt, content_prompt, style_prompt, content_from, style_from)
        # the prompts a pair filled in are its trained ones: name the field they stand for
        positive = _encode(clip, used["combined"], "prompt")
        streams = {}
        for role in ("content", "style"):
            text = used[role]
            streams[role] = positive if not text or text == used["combined"] else _encode(clip, text, f"{role}_prompt")
        positive = with_streams(positive, streams["content"], streams["style"])
        zero_main = empty_negative == "zeros" and not negative_prompt.strip()
        negative = with_zero_streams(_encode(clip, negative_prompt, "negative_prompt"), zero_main=zero_main)
        log.info("UnZipLoRA Prompts: combined %r, content %r, style %r", used["combined"], used["content"],
                 used["style"])
        return io.NodeOutput(positive, negative)
