"""UnZipLoRA Train Folder: one background job per image of a folder of ComfyUI's input directory (a catalogue)."""

from __future__ import annotations

import os
import uuid

from comfy_api.latest import io

from ..unziplora import compat
from ..unziplora.roles import MODES
from .batch_run import plan_items, start_items
from .train import UnZipLoRATrain, train_config, train_queue_check, workflow_id_of
from .validate import check_inputs, check_name, check_prompts, plain_errors

_SKIPPED = ("image", "run_mode")  # one image per job comes from the folder; a batch always runs in the background


def input_subfolders() -> list[str]:
    """Folders under ComfyUI's input directory (relative, '/'-separated), as core's dataset loaders list them."""
    import folder_paths

    root = folder_paths.get_input_directory()
    found = []
    for here, dirs, _files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(here, root)
        if rel != ".":
            found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def _inputs() -> list:
    out = []
    for inp in UnZipLoRATrain.define_schema().inputs:
        if inp.id in _SKIPPED:
            continue
        if inp.id == "name":
            inp = io.String.Input("name", default="catalogue",
                                  tooltip="Each image's job is named <name>_<file stem> (files <name>_<stem>_content "
                                          "/ _style in models/loras/unziplora); a taken name gets a numbered suffix, "
                                          "never overwritten.")
        elif inp.id in ("content_prompt", "style_prompt", "combined_prompt"):
            inp.tooltip = (inp.tooltip or "") + " Used for images without a caption file (<stem>.txt beside the " \
                                                "image, kohya's convention); see the node's help."
        out.append(inp)
        if inp.id == "vae":
            out.append(io.Combo.Input("folder", options=input_subfolders(),
                                      tooltip="A folder inside ComfyUI's input directory. Every image in it (png, jpg, "
                                              "jpeg, webp, bmp; not in sub-folders) becomes one job."))
    return out


class UnZipLoRATrainFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UnZipLoRATrainFolder",
            display_name="UnZipLoRA Train Folder",
            category="UnZipLoRA/train",
            description="Train one content + style pair per image of a folder: one background job each, queued behind "
                        "each other. A caption file <stem>.txt beside an image gives that image its prompts. The "
                        "sidebar shows the batch's queue and ETA, with cancel and resume for one job or all.",
            is_output_node=True,
            not_idempotent=True,
            inputs=_inputs(),
            outputs=[
                io.String.Output("batch_id", display_name="batch_id", tooltip="The batch's id (GET /unziplora/batches)."),
                io.String.Output("job_ids", display_name="job_ids", tooltip="The jobs' ids, one a line, in file order."),
                io.String.Output("names", display_name="names",
                                 tooltip="The pairs' names, one a line (<name>_<stem>), in file order."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return uuid.uuid4().hex  # as Train: an unchanged graph queued again starts a new batch

    @classmethod
    def validate_inputs(cls, content_prompt=None, style_prompt=None, combined_prompt=None, name=None, mode=None,
                        steps=None, selections=None, resolution=None, gradient_checkpointing=None, precision=None,
                        preset=None, folder=None):
        """At queue time, as Train: combos (the folder too), text, name, the settings that depend on each other."""
        return train_queue_check(cls, locals())

    @classmethod
    @plain_errors
    def execute(cls, model, clip, vae, folder, content_prompt, style_prompt, combined_prompt, name, mode, steps, rank,
                lr_content, lr_style, lr_merger, column_ratio, selections, orth_lambda, resolution, seed,
                checkpoint_every, preview_every, preview_steps, gradient_checkpointing, precision,
                preset="auto", device=compat.DEFAULT_DEVICE, save_every=0, **_ignored) -> io.NodeOutput:
        check_inputs(cls, locals())
        train_device = compat.resolve_device(device)  # None: ComfyUI's own device; every job of the batch on it
        config = train_config(locals())
        name = check_name(name)
        items, batch_id, resumes = plan_items(folder, name, content_prompt, style_prompt, combined_prompt,
                                              cls.hidden.extra_pnginfo, cls.hidden.unique_id)
        separation = MODES[mode].prompt_separation
        for item in items:  # every image's prompts are checked before any job starts
            check_prompts(item["prompts"]["content"], item["prompts"]["style"], separation)
        jobs = start_items(items, batch_id, name, folder, resumes, config, model, clip, vae,
                           prompt=cls.hidden.prompt, node_id=cls.hidden.unique_id,
                           workflow_id=workflow_id_of(cls.hidden.extra_pnginfo), device=train_device,
                           save_every=save_every)
        ids = [j.id for j in jobs]
        ui = {"unziplora_batch": [batch_id]}
        return io.NodeOutput(batch_id, "\n".join(ids), "\n".join(j.info["output_name"] for j in jobs), ui=ui)
