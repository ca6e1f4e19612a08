"""Loader nodes: a content / style LoRA pair (UNZIPLORA_PAIR) from a trained run, two LoRA files or a B-LoRA.

Three nodes rather than one with a format combo: each asks only for what its source has (a run, two files, one
file), so no input is ever ignored. The official UnZipLoRA script's output needs no node of its own: its two
LoRA files load in "Load LoRA Pair", which finds the NAME_merger_<side>.pth files next to them.
"""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ..unziplora import pair as pairs
from .runtime import MODEL_FOLDER, path_display, register_folders
from .validate import check_inputs, loading, plain_errors, queue_check

log = logging.getLogger("unziplora")

PairType = io.Custom("UNZIPLORA_PAIR")
PAIR_TOOLTIP = "A content LoRA and a style LoRA (with their mergers and prompts): connect to UnZipLoRA Apply / Prompts."


def _full_path(folder: str, name: str) -> str:
    import folder_paths

    return folder_paths.get_full_path_or_raise(folder, name)


def _mtime(folder: str, name: str):
    import folder_paths

    path = folder_paths.get_full_path(folder, name)
    return (name, os.path.getmtime(path)) if path and os.path.exists(path) else (name, None)


def _lora_list() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("loras")


class UnZipLoRALoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        register_folders()  # idempotent; the folder must exist before it can be listed
        return io.Schema(
            node_id="UnZipLoRALoader",
            display_name="UnZipLoRA Loader",
            category="UnZipLoRA/loaders",
            description="Load a trained UnZipLoRA run: its content and style LoRAs, mergers and prompts.",
            inputs=[
                io.Combo.Input("bundle", options=folder_paths.get_filename_list(MODEL_FOLDER),
                               tooltip="A trained run (models/unziplora/<name>.safetensors). Its two LoRA files are "
                                       "looked up in models/loras/unziplora, models/loras or next to it."),
            ],
            outputs=[
                PairType.Output("pair", display_name="pair", tooltip=PAIR_TOOLTIP),
                io.String.Output("prompt", display_name="prompt",
                                 tooltip="The combined prompt the run was trained with."),
                io.String.Output("content_prompt", display_name="content_prompt",
                                 tooltip="The content prompt the run was trained with."),
                io.String.Output("style_prompt", display_name="style_prompt",
                                 tooltip="The style prompt the run was trained with."),
                io.String.Output("content_trigger", display_name="content_trigger",
                                 tooltip="Words that call up the content (e.g. 'sks cat')."),
                io.String.Output("style_trigger", display_name="style_trigger",
                                 tooltip="Words that call up the style."),
                io.String.Output("prediction", display_name="prediction",
                                 tooltip="What the base model the run was trained on predicts, from the files' "
                                         "metadata: 'epsilon (noise) prediction' or 'v-prediction' (', zero terminal "
                                         "SNR' if so). Use the LoRAs on a model that predicts the same. Empty: the "
                                         "files do not say (runs made before the pack wrote it)."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, bundle):
        return _mtime(MODEL_FOLDER, bundle)

    @classmethod
    def validate_inputs(cls, bundle=None):
        return queue_check(cls, locals())

    @classmethod
    @plain_errors
    def execute(cls, bundle) -> io.NodeOutput:
        import folder_paths

        check_inputs(cls, locals())
        with loading("bundle", bundle, path_display()):
            handle = pairs.from_bundle(_full_path(MODEL_FOLDER, bundle), folder_paths.get_folder_paths("loras"))
        log.info("UnZipLoRA: loaded %s", handle.summary())
        return io.NodeOutput(handle, handle.prompt, handle.text("content"), handle.text("style"),
                             handle.text("content", "trigger"), handle.text("style", "trigger"), handle.prediction,
                             ui={"text": [f"{handle.name}: {handle.prediction or 'prediction type not recorded'}"]})


class UnZipLoRALoadFiles(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        loras = _lora_list()
        return io.Schema(
            node_id="UnZipLoRALoadFiles",
            display_name="UnZipLoRA Load LoRA Pair",
            category="UnZipLoRA/loaders",
            description="Any two SDXL LoRA files as a content / style pair (kohya, diffusers/PEFT, ComfyUI or the "
                        "official UnZipLoRA script's files; the format is detected). Cross two runs: content of "
                        "one, style of another.",
            inputs=[
                io.Combo.Input("content_lora", options=loras,
                               tooltip="The LoRA that carries the subject (from models/loras)."),
                io.Combo.Input("style_lora", options=loras,
                               tooltip="The LoRA that carries the style (from models/loras)."),
                io.Combo.Input("mergers", options=["auto", "none"], default="auto",
                               tooltip="auto: use the per-column mergers that belong to each file if they are found "
                                       "(an UnZipLoRA run's bundle, or the official script's NAME_merger_<side>.pth "
                                       "next to NAME_<side>/). none: plain LoRAs (mergers all 1)."),
            ],
            outputs=[PairType.Output("pair", display_name="pair", tooltip=PAIR_TOOLTIP)],
        )

    @classmethod
    def fingerprint_inputs(cls, content_lora, style_lora, mergers):
        return _mtime("loras", content_lora), _mtime("loras", style_lora), mergers

    @classmethod
    def validate_inputs(cls, content_lora=None, style_lora=None, mergers=None):
        return queue_check(cls, locals())

    @classmethod
    @plain_errors
    def execute(cls, content_lora, style_lora, mergers) -> io.NodeOutput:
        import folder_paths

        check_inputs(cls, locals())
        display = path_display()
        picked = {"content": ("content_lora", content_lora), "style": ("style_lora", style_lora)}
        paths, found = {}, {r: None for r in pairs.SIDES}
        for role, (input_name, value) in picked.items():
            with loading(input_name, value, display):
                paths[role] = _full_path("loras", value)
                if mergers == "auto":
                    found[role] = pairs.find_mergers(paths[role], role, folder_paths.get_folder_paths(MODEL_FOLDER))
        try:
            handle = pairs.from_files(paths["content"], paths["style"], content_mergers=found["content"],
                                      style_mergers=found["style"])
        except (ValueError, OSError, RuntimeError, KeyError) as e:
            # the readers' messages start with the file's name: blame the input that picked it
            files = [(paths[r], picked[r]) for r in pairs.SIDES] + [(found[r], picked[r]) for r in pairs.SIDES if found[r]]
            which = [p for f, p in files if str(e).startswith(os.path.basename(f))] or [picked["content"]]
            with loading(*which[0], display):
                raise
        log.info("UnZipLoRA: loaded %s", handle.summary())
        return io.NodeOutput(handle)


class UnZipLoRALoadBLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UnZipLoRALoadBLoRA",
            display_name="UnZipLoRA Load B-LoRA",
            category="UnZipLoRA/loaders",
            description="A B-LoRA file split by block: output_blocks.0.1 is the content, output_blocks.1.1 the style.",
            inputs=[
                io.Combo.Input("lora", options=_lora_list(),
                               tooltip="A B-LoRA (one LoRA trained only on SDXL's up_blocks.0.attentions.0 and .1)."),
            ],
            outputs=[PairType.Output("pair", display_name="pair", tooltip=PAIR_TOOLTIP)],
        )

    @classmethod
    def fingerprint_inputs(cls, lora):
        return _mtime("loras", lora)

    @classmethod
    def validate_inputs(cls, lora=None):
        return queue_check(cls, locals())

    @classmethod
    @plain_errors
    def execute(cls, lora) -> io.NodeOutput:
        check_inputs(cls, locals())
        with loading("lora", lora, path_display()):
            handle = pairs.from_blora(_full_path("loras", lora))
        log.info("UnZipLoRA: loaded %s", handle.summary())
        return io.NodeOutput(handle)
