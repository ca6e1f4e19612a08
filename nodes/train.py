"""UnZipLoRA Train: hands one image + three prompts to a background job and returns at once."""

from __future__ import annotations

import time

import torch
from comfy_api.latest import io

from ..training.config import CHECKPOINTING, TrainConfig
from ..training.presets import PRESETS, apply_preset, preset_tooltip
from ..training.prepare import prepare_inputs
from ..unziplora import compat
from ..unziplora.roles import MODES
from . import train_cache
from .runtime import service
from .validate import shown, check_inputs, check_name, check_prompts, plain_errors, queue_check

PAPER = TrainConfig()
PREVIEW_EVERY = 100  # six rounds over the paper's 600 steps


def build_combined_prompt(content_prompt: str, style_prompt: str) -> str:
    """'A sks cat' + 'A cat in sketch style' -> 'A sks cat in sketch style' (the paper's pattern); otherwise
    the two joined with a comma."""
    content, style = content_prompt.strip(), style_prompt.strip()
    idx = style.lower().rfind(" in ")
    if idx > 0:
        return f"{content.rstrip('.,')}{style[idx:]}"
    return f"{content}, {style}"




class UnZipLoRATrain(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UnZipLoRATrain",
            display_name="UnZipLoRA Train",
            category="UnZipLoRA/train",
            description="Train a content LoRA and a style LoRA from one image (UnZipLoRA). Runs in the background: "
                        "the queue stays free; progress, cancel and resume are on the node's panel.",
            is_output_node=True,
            not_idempotent=True,
            inputs=[
                io.Model.Input("model", tooltip="An SDXL-architecture model (the base the LoRAs will be used on)."),
                io.Clip.Input("clip", tooltip="The model's CLIP: encodes the three prompts once."),
                io.Vae.Input("vae", tooltip="The model's VAE: encodes the image once."),
                io.Image.Input("image", tooltip="The image to unzip. A batch of several views of the same subject "
                                                "and style also works: each step picks one at random."),
                io.String.Input("content_prompt", default="A sks cat", multiline=True,
                                tooltip="Names the subject with a rare token, e.g. 'A sks cat'. The content LoRA learns it."),
                io.String.Input("style_prompt", default="A cat in sketch style", multiline=True,
                                tooltip="Describes the style on a plain subject, e.g. 'A cat in sketch style'. "
                                        "The style LoRA learns it."),
                io.String.Input("combined_prompt", default="", multiline=True,
                                tooltip="Subject and style together, e.g. 'A sks cat in sketch style'. "
                                        "Empty: built from the two prompts."),
                io.String.Input("name", default="unziplora",
                                tooltip="File name stem: <name>_content / <name>_style in models/loras/unziplora. "
                                        "An existing name gets a numbered suffix, never overwritten."),
                io.Combo.Input("mode", options=list(MODES), default=PAPER.mode,
                               tooltip="unziplora: prompt + column + block separation (the paper). column, prompt: "
                                       "ablations M2, M1. naive: two LoRAs on one prompt. blora: B-LoRA."),
                io.Int.Input("steps", default=PAPER.steps, min=1, max=100000, tooltip="Optimiser steps (paper: 600)."),
                io.Int.Input("rank", default=PAPER.rank, min=1, max=1024, tooltip="LoRA rank of both LoRAs (paper: 64)."),
                io.Float.Input("lr_content", default=PAPER.lr_content, min=1e-7, max=1.0, step=1e-6,
                               tooltip="Learning rate of the content LoRA (paper: 5e-5)."),
                io.Float.Input("lr_style", default=PAPER.lr_style, min=1e-7, max=1.0, step=1e-6,
                               tooltip="Learning rate of the style LoRA (paper: 5e-5)."),
                io.Float.Input("lr_merger", default=PAPER.lr_merger, min=1e-7, max=1.0, step=1e-5,
                               tooltip="Learning rate of the per-column mergers (paper: 5e-3)."),
                io.Float.Input("column_ratio", default=PAPER.column_ratio, min=0.001, max=1.0, step=0.01,
                               tooltip="Share of columns each selection adds to a mask (paper: 0.1)."),
                io.Int.Input("selections", default=PAPER.sample_times, min=1, max=100,
                             tooltip="How many column selections over the run (paper: 3)."),
                io.Float.Input("orth_lambda", default=PAPER.orth_lambda, min=0.0, max=100.0, step=0.05,
                               tooltip="Weight of the loss that keeps the two LoRAs' columns apart (paper: 0.5)."),
                io.Int.Input("resolution", default=PAPER.resolution, min=64, max=4096, step=64,
                             tooltip="Training crop size in pixels (paper: 1024). The image's shorter side is resized to it."),
                io.Int.Input("seed", default=PAPER.seed, min=0, max=0xFFFFFFFFFFFFFFF,
                             tooltip="Seed of LoRA init, crops, noise and timesteps. Same inputs + seed = same LoRAs."),
                io.Int.Input("checkpoint_every", default=PAPER.checkpoint_every, min=0, max=100000,
                             tooltip="Save a resumable checkpoint every N steps (0: only when cancelled)."),
                # previews on by default in the node (the config's 0 suits scripts): users pick a step by them
                io.Int.Input("preview_every", default=PREVIEW_EVERY, min=0, max=100000,
                             tooltip="Render content / style / combined previews every N steps (0: none)."),
                io.Int.Input("preview_steps", default=PAPER.preview_steps, min=1, max=100,
                             tooltip="Sampling steps of each preview (few: previews are sketches of progress)."),
                io.Combo.Input("gradient_checkpointing", options=list(CHECKPOINTING), default="auto",
                               tooltip="Trade time for memory. auto: on for GPUs, off on CPU. selective: only the "
                                       "10-deep blocks, where most activations live."),
                io.Combo.Input("precision", options=["auto", "fp32", "bf16", "fp16"], default="auto",
                               tooltip="auto: bf16 where supported, fp16 with loss scaling on older GPUs, fp32 on CPU."),
                io.Combo.Input("run_mode", options=["background", "blocking"], default="background",
                               tooltip="background: return at once, queue stays free. blocking: train inside the "
                                       "queue with ComfyUI's progress bar and Cancel (for small GPUs)."),
                io.Combo.Input("preset", options=list(PRESETS), default="auto", optional=True, tooltip=preset_tooltip()),
                # widget values are saved by position: new inputs go last, so saved workflows keep their values
                io.Int.Input("save_every", default=0, min=0, max=100000, optional=True,
                             tooltip="Also save the LoRAs every N steps, as <name>_stepNNNNNN (the loaders list them; "
                                     "the panel's previews offer 'use this step'). 0: only at the end."),
                io.Combo.Input("device", options=compat.device_options(), default=compat.DEFAULT_DEVICE, optional=True,
                               tooltip="Where the job trains. default: ComfyUI's device. gpu:N: another card (train "
                                       "on one GPU while prompts run on the other); cpu: slow, for small tests."),
            ],
            outputs=[
                # display_name: the frontend labels outputs with it (else with the type: "STRING" x4)
                io.String.Output("job_id", display_name="job_id", tooltip="The background job's id."),
                io.String.Output("content_lora", display_name="content_lora",
                                 tooltip="Path the content LoRA is written to."),
                io.String.Output("style_lora", display_name="style_lora", tooltip="Path the style LoRA is written to."),
                io.String.Output("bundle", display_name="bundle",
                                 tooltip="Path of the bundle (mergers + masks) for the combined mode."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        # the same value for unchanged inputs whose job is done or running: ComfyUI answers the stock Run from
        # its cache and starts nothing; the panel's Train / Resume break the cache with a fresh FORCE_KEY input
        # (nodes/train_cache.py). A string, never NaN: ComfyUI stores it in the queue/history JSON.
        return train_cache.fingerprint(service().manager, kwargs)

    @classmethod
    def validate_inputs(cls, content_prompt=None, style_prompt=None, combined_prompt=None, name=None, mode=None,
                        steps=None, selections=None, resolution=None, gradient_checkpointing=None, precision=None,
                        run_mode=None, preset=None):
        """At queue time: what needs no model (combos, text, name, the settings that depend on each other)."""
        return train_queue_check(cls, locals())

    @classmethod
    @plain_errors
    def execute(cls, model, clip, vae, image, content_prompt, style_prompt, combined_prompt, name, mode, steps, rank,
                lr_content, lr_style, lr_merger, column_ratio, selections, orth_lambda, resolution, seed,
                checkpoint_every, preview_every, preview_steps, gradient_checkpointing, precision, run_mode,
                preset="auto", device=compat.DEFAULT_DEVICE, save_every=0, **_ignored) -> io.NodeOutput:
        check_inputs(cls, locals())
        train_device = compat.resolve_device(device)  # None: ComfyUI's own device
        config = train_config(locals())
        name = check_name(name)
        check_prompts(content_prompt, style_prompt, MODES[mode].prompt_separation)
        svc = service()
        # checked again when the job is submitted, under the manager's lock (two prompts resuming one job)
        resume_from = resume_request(cls.hidden.extra_pnginfo, cls.hidden.unique_id)
        resume_job = svc.manager.check_resume(resume_from) if resume_from else None
        if resume_job is not None and str(resume_job.info.get("node_id")) != str(cls.hidden.unique_id):
            raise ValueError(f"Resume of job {resume_from!r}: it was started by train node "
                             f"{resume_job.info.get('node_id')}, not by this one ({cls.hidden.unique_id}): a job resumes "
                             "with its own node's settings (use Resume on its panel)")
        request = train_cache.request_key(cls.hidden.prompt, cls.hidden.unique_id, image)
        if not resume_job and not train_cache.forced(cls.hidden.prompt, cls.hidden.unique_id):
            same = train_cache.reusable_job(svc.manager, request, cls.hidden.unique_id)
            if same is not None:  # an unchanged Run the cache could not answer: that job, no new one
                return _outputs(same)
        prompt = combined_prompt.strip() or build_combined_prompt(content_prompt, style_prompt)
        inputs = prepare_inputs(model, clip, vae, image, prompt, content_prompt, style_prompt, config)
        make_room_for_training(inputs.unet, train_device)
        job = svc.start(inputs, config, name, resume_prompt=cls.hidden.prompt, node_id=cls.hidden.unique_id,
                        resume_job=resume_job, base_name=base_model_name(cls.hidden.prompt, cls.hidden.unique_id),
                        workflow_id=workflow_id_of(cls.hidden.extra_pnginfo), device=train_device,
                        save_every=save_every)
        job.info.update(request_key=request, widget_key=train_cache.widget_key_of(cls.hidden.prompt,
                                                                                   cls.hidden.unique_id))
        if run_mode == "blocking":
            job = _wait_in_queue(svc, job)
        return _outputs(job)


def train_config(values: dict) -> TrainConfig:
    """The run's settings from Train's (or Train Folder's) input values, the preset applied last."""
    v = values
    config = TrainConfig(mode=v["mode"], steps=v["steps"], rank=v["rank"], lr_content=v["lr_content"],
                         lr_style=v["lr_style"], lr_merger=v["lr_merger"], column_ratio=v["column_ratio"],
                         sample_times=v["selections"], orth_lambda=v["orth_lambda"], resolution=v["resolution"],
                         seed=v["seed"], checkpoint_every=v["checkpoint_every"], preview_every=v["preview_every"],
                         preview_steps=v["preview_steps"], gradient_checkpointing=v["gradient_checkpointing"],
                         precision=v["precision"]).validate()
    return apply_preset(v.get("preset", "auto"), config)


def train_queue_check(node_cls, values: dict):
    """validate_inputs of Train and Train Folder: True, or the message naming the first bad input."""
    found = queue_check(node_cls, values)
    if found is not True:
        return found
    name, mode, steps, selections, resolution = (values.get(k) for k in ("name", "mode", "steps", "selections",
                                                                          "resolution"))
    try:
        if name is not None:
            check_name(name)
        if None not in (mode, steps, selections, resolution):
            TrainConfig(mode=mode, steps=steps, sample_times=selections, resolution=resolution).validate()
        if None not in (values.get("content_prompt"), values.get("style_prompt"), mode):
            check_prompts(values["content_prompt"], values["style_prompt"], MODES[mode].prompt_separation)
    except ValueError as e:
        return str(e)
    return True


def _outputs(job) -> io.NodeOutput:
    planned = job.info["planned_outputs"]
    # the job id for API clients (history) and the panel (onExecuted); one key only: the web extension hides
    # it from the queue panel, which lists every ui key as a result file
    ui = {"unziplora_job": [job.id]}
    return io.NodeOutput(job.id, planned["content"], planned["style"], planned["bundle"], ui=ui)


RESUME_KEY = "unziplora_resume"  # extra_pnginfo[RESUME_KEY] = {train node id: job id}, set by the Resume route


def resume_request(extra_pnginfo, node_id) -> str:
    """The job this run resumes, if the panel's Resume queued it. It travels in the prompt's extra data, not in an
    input: a widget would be shown to users (and saved in their workflows) for plumbing only the panel sets.

    The channel exists for the Resume route only, which always writes {train node id: job id}: anything else in it
    is refused by name rather than read as "no resume" (a fresh run the client did not ask for)."""
    if not isinstance(extra_pnginfo, dict) or RESUME_KEY not in extra_pnginfo:
        return ""
    wanted = extra_pnginfo[RESUME_KEY]
    if not isinstance(wanted, dict):
        raise ValueError(f"extra_pnginfo.{RESUME_KEY} = {shown(wanted)} is not allowed: an object "
                         "{train node id: job id}, as the Resume route (POST /unziplora/jobs/<id>/resume) writes it")
    job = wanted.get(str(node_id))
    if job is None:  # a resume for another train node of the graph
        return ""
    if not isinstance(job, str):
        raise ValueError(f"extra_pnginfo.{RESUME_KEY}[{str(node_id)!r}] = {shown(job)} is not allowed: a job id "
                         "(12 hex digits, as a string)")
    return job


def workflow_id_of(extra_pnginfo) -> str | None:
    """The id of the browser workflow that queued the prompt (the frontend sends the workflow in extra_pnginfo):
    with the node id it tells the panel which node in which workflow started a job."""
    workflow = extra_pnginfo.get("workflow") if isinstance(extra_pnginfo, dict) else None
    wid = workflow.get("id") if isinstance(workflow, dict) else None
    # the frontend's nil id means "none given" (graphs made by loadApiJson, or saved by older frontends)
    return wid if isinstance(wid, str) and wid.strip("0-") else None


def base_model_name(prompt: dict | None, node_id: str | None) -> str:
    """The checkpoint file the MODEL input comes from, following the graph upstream (for the files' metadata)."""
    seen = set()
    current = node_id
    while prompt and current in prompt and current not in seen:
        seen.add(current)
        inputs = prompt[current].get("inputs", {})
        for key in ("ckpt_name", "unet_name", "model_name"):
            if isinstance(inputs.get(key), str):
                return inputs[key]
        link = inputs.get("model")
        current = str(link[0]) if isinstance(link, list) and link else None
    return ""


def make_room_for_training(unet, device=None) -> None:
    """Ask ComfyUI to unload what it can from the job's device (None: ComfyUI's) for the job's UNet copy and its
    activations / optimiser state (twice the weights). This runs in the queue thread, the only place model
    management may be touched; the job's memory is invisible to it later.

    Weights already on that device are not asked for again: prepare_inputs makes a CUDA job's copy on the card
    (after its own make_room), and ComfyUI's free memory no longer includes them. Asking for them a second time
    unloaded one copy's worth of models more than the job needs."""
    import comfy.model_management as mm

    device = torch.device(device) if device is not None else mm.get_torch_device()
    if device.type == "cpu":
        return
    weights = elsewhere = 0
    for p in unet.parameters():
        size = p.numel() * p.element_size()
        weights += size
        if not _on(p.device, device):
            elsewhere += size
    mm.free_memory(elsewhere + 2 * weights, device)
    mm.soft_empty_cache()


def _on(where: torch.device, device: torch.device) -> bool:
    """A tensor on `where` sits on `device` (a cuda device without an index is the current card)."""
    def card(d):
        return torch.device(d.type, torch.cuda.current_device()) if d.type == "cuda" and d.index is None else d

    return card(where) == card(device)


def _wait_in_queue(svc, job):
    """Blocking mode: ComfyUI's progress bar and Interrupt, driven from the queue thread (never from the job)."""
    import comfy.model_management as mm
    import comfy.utils

    bar = comfy.utils.ProgressBar(job.total)
    while job.state not in ("done", "failed", "cancelled", "interrupted"):
        if mm.processing_interrupted():
            svc.manager.cancel(job.id)
            svc.manager.wait(job.id)
            mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(job.step, job.total)
        time.sleep(0.2)
    if job.state == "failed":
        raise RuntimeError(f"UnZipLoRA training failed: {job.error}")
    return job
