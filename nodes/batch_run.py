"""What UnZipLoRA Train Folder does in the queue thread: plan the batch's items (new, or the ones a resume asks
for), prepare every image, then start one job per image. Every image is read and prepared before the first job
starts, so a bad image fails the node naming its file and no job of the batch exists."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from ..training.batch import SharedBaseInputs, job_name, list_images, new_batch_id, prompts_for, read_caption, \
    valid_batch_id
from ..training.jobs import ResumeRefused
from ..training.prepare import prepare_inputs
from .runtime import service
from .train import RESUME_KEY, base_model_name, build_combined_prompt, make_room_for_training

BATCH_RESUME_KEY = "unziplora_resume_batch"  # extra_pnginfo[key] = {node id: {"batch": id, "jobs": [job ids]}}
IMAGE_KINDS = "png, jpg, jpeg, webp or bmp"


def folder_path(folder: str) -> str:
    """The folder inside ComfyUI's input directory; ValueError naming `folder` for anything outside it."""
    import folder_paths

    root = os.path.realpath(folder_paths.get_input_directory())
    if not isinstance(folder, str) or not folder.strip():
        raise ValueError("folder is empty: pick a folder inside ComfyUI's input directory")
    path = os.path.realpath(os.path.join(root, folder))
    if os.path.commonpath([root, path]) != root or path == root:
        raise ValueError(f"folder = {folder[:80]!r} is not allowed: a folder inside ComfyUI's input directory")
    if not os.path.isdir(path):
        raise ValueError(f"folder = {folder[:80]!r} does not exist in ComfyUI's input directory")
    return path


def _wanted(extra_pnginfo, node_id) -> tuple[str | None, list[str]]:
    """(batch id, job ids) a resume asks this node to continue; (None, []) for a fresh batch."""
    if not isinstance(extra_pnginfo, dict):
        return None, []
    batch = extra_pnginfo.get(BATCH_RESUME_KEY)
    batch = batch.get(str(node_id)) if isinstance(batch, dict) else None
    if isinstance(batch, dict) and valid_batch_id(batch.get("batch")) and isinstance(batch.get("jobs"), list):
        return batch["batch"], [j for j in batch["jobs"] if isinstance(j, str)]
    single = extra_pnginfo.get(RESUME_KEY)
    single = single.get(str(node_id)) if isinstance(single, dict) else None
    if isinstance(single, str):
        job = service().manager.get(single)
        info_batch = (job.info.get("batch") or {}) if job is not None else {}
        if valid_batch_id(info_batch.get("id")):
            return info_batch["id"], [single]
        raise ResumeRefused(f"Resume of job {single[:40]!r}: it is not a job of a Train Folder batch")
    return None, []


def plan_items(folder: str, name: str, content_prompt: str, style_prompt: str, combined_prompt: str,
               extra_pnginfo, node_id) -> tuple[list[dict], str, bool]:
    """(items, batch id, is a resume). An item: index, file, path, prompts, name, count, resume_job."""
    path = folder_path(folder)
    batch_id, job_ids = _wanted(extra_pnginfo, node_id)
    if batch_id is None:
        files = list_images(path)
        if not files:
            raise ValueError(f"folder = {folder[:80]!r} has no images ({IMAGE_KINDS}) directly inside it")
        items = []
        for i, file in enumerate(files):
            full = os.path.join(path, file)
            items.append({"index": i, "file": file, "path": full, "count": len(files), "resume_job": None,
                          "name": job_name(name, file),
                          "prompts": prompts_for(read_caption(full), content_prompt, style_prompt, combined_prompt)})
        return items, new_batch_id(), False
    manager = service().manager
    items = []
    for job_id in job_ids:
        old = manager.get(job_id)
        b = (old.info.get("batch") or {}) if old is not None else {}
        if old is None or b.get("id") != batch_id:
            raise ResumeRefused(f"Resume of batch {batch_id}: job {job_id[:40]!r} is not one of its jobs")
        resume_job = None
        if old.checkpoint:
            try:
                resume_job = manager.check_resume(job_id)
            except ResumeRefused:
                if len(job_ids) == 1:
                    raise
                # resume all: an image whose checkpoint is gone is trained again from the start
        info = old.info
        items.append({"index": int(b.get("index", 0)), "file": b.get("file", ""),
                      "path": os.path.join(path, os.path.basename(str(b.get("file", "")))),
                      "count": int(b.get("count", 0)), "resume_job": resume_job,
                      "name": info.get("requested_name") or old.name,
                      "prompts": {"content": info.get("content_prompt", ""), "style": info.get("style_prompt", ""),
                                  "combined": info.get("prompt", "")}})
    return items, batch_id, True


def load_image(path: str, shown: str) -> torch.Tensor:
    """[1, H, W, 3] float in 0..1, as LoadImage gives it (EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "I":
                im = im.point(lambda v: v * (1 / 255))
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise ValueError(f"folder: {shown} is gone (it was in the folder when the batch was planned)") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"folder: {shown} could not be read as an image ({type(e).__name__}: {str(e)[:120]})") \
            from None
    return torch.from_numpy(arr)[None]


def start_items(items, batch_id, name, folder, is_resume, config, model, clip, vae, *, prompt, node_id,
                workflow_id, device=None, save_every=0):
    """Starts one job per item, each with Train's later inputs too (device: None for ComfyUI's; save_every)."""
    svc = service()
    shared: dict = {}
    prepared = []
    for item in items:
        shown = f"{folder}/{item['file']}"
        image = load_image(item["path"], shown)
        p = item["prompts"]
        combined = p["combined"].strip() or build_combined_prompt(p["content"], p["style"])
        inputs = prepare_inputs(model, clip, vae, image, combined, p["content"], p["style"], config, shared=shared)
        fields = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs) if f.name != "unet"}
        fields["info"] = dict(fields["info"], batch_name=name, caption=os.path.isfile(
            os.path.splitext(item["path"])[0] + ".txt"),
            batch={"id": batch_id, "index": item["index"], "count": item["count"], "file": item["file"],
                   "folder": folder})
        prepared.append((item, SharedBaseInputs(inputs.unet, **fields)))
    if shared.get("unet") is not None:
        make_room_for_training(shared["unet"], device)
    base = base_model_name(prompt, node_id)
    jobs = []
    for item, inputs in prepared:
        jobs.append(svc.start(inputs, config, item["name"], resume_prompt=prompt, node_id=node_id,
                              resume_job=item["resume_job"], base_name=base, workflow_id=workflow_id,
                              device=device, save_every=save_every))
    return jobs
