"""Routes for batches (Train Folder) and for a job's own files. Registered by routes.register_routes.

GET  /unziplora/batches                         every batch: items, queue positions, ETAs, counts
POST /unziplora/batches/{batch_id}/cancel       cancel every queued or running job of the batch
POST /unziplora/batches/{batch_id}/resume       re-queue the batch's graph for its unfinished images
GET  /unziplora/jobs/{job_id}/files             the job's files: kind, name, bytes, url
GET  /unziplora/jobs/{job_id}/files/{kind}      content | style | bundle: the file itself
GET  /unziplora/jobs/{job_id}/files/previews/{filename}    one of the job's preview PNGs

The file routes serve only what a job wrote: the paths recorded on the job, checked again to lie in the pack's
own output folders, plus PNGs named like previews in the job's own preview folder. No path from the request is
ever joined to a folder except a preview name that matched PREVIEW_NAME first.
"""

from __future__ import annotations

import copy
import json
import os
import re

from aiohttp import web

from ..training.batch import batch_views, valid_batch_id
from .batch_run import BATCH_RESUME_KEY
from .routes import BadRequest, _error, _job_or_404, _json_errors, _prompt_waiting, post_prompt, read_body, \
    resume_lock, resume_request
from .runtime import service

FILE_KINDS = ("content", "style", "bundle")
PREVIEW_NAME = re.compile(r"\Astep_\d{1,9}_(content|style|combined)\.png\Z")  # \Z: "$" would accept a trailing newline


def _views() -> list[dict]:
    manager = service().manager
    return batch_views([manager.public(j) for j in manager.list()])


def _batch_or_404(request: web.Request) -> dict:
    batch_id = request.match_info["batch_id"]
    if not valid_batch_id(batch_id):
        raise BadRequest(f"{batch_id[:40]!r} is not a batch id: 12 lowercase hex digits")
    for view in _views():
        if view["id"] == batch_id:
            return view
    raise web.HTTPNotFound(text=json.dumps({"error": f"no batch with id {batch_id}"}), content_type="application/json")


@_json_errors
async def list_batches(request: web.Request) -> web.Response:
    return web.json_response({"batches": _views()})


@_json_errors
async def cancel_batch(request: web.Request) -> web.Response:
    view = _batch_or_404(request)
    await read_body(request)
    manager = service().manager
    # the queued ones first: cancelling the running job first would let the next one start meanwhile
    jobs = [manager.get(i) for i in view["active"]]
    for job in sorted(jobs, key=lambda j: j.state != "queued"):
        manager.cancel(job.id)
    return web.json_response({"cancelled": [j.id for j in jobs], "batch": _batch_or_404(request)})


async def resume_batch(request: web.Request) -> web.Response:
    _batch_or_404(request)
    client_id, server = await resume_request(request)
    manager = service().manager
    async with resume_lock():
        view = _batch_or_404(request)
        if view["active"]:
            return _error(409, f"batch {view['id']} still has {len(view['active'])} queued or running job(s): "
                               "resume all is for a batch that stopped", batch=view)
        jobs = [manager.get(i) for i in view["unfinished"]]
        pending = [j for j in jobs if _prompt_waiting(server, j.resume_pending)]
        if pending:
            return _error(409, f"batch {view['id']} is already being resumed by prompt {pending[0].resume_pending}",
                          prompt_id=pending[0].resume_pending, batch=view)
        if not jobs:
            return _error(409, f"batch {view['id']} has nothing to resume: every image is done", batch=view)
        first = jobs[0]
        if first.resume_prompt is None:
            return _error(409, f"batch {view['id']} cannot be resumed: its graph was not recorded", batch=view)
        prompt = copy.deepcopy(first.resume_prompt)
        for node in prompt.values():
            if isinstance(node, dict):
                node.pop("is_changed", None)
        node_id = str(first.info.get("node_id"))
        pnginfo = {BATCH_RESUME_KEY: {node_id: {"batch": view["id"], "jobs": [j.id for j in jobs]}}}
        if first.info.get("workflow_id"):
            pnginfo["workflow"] = {"id": first.info["workflow_id"]}
        payload = {"prompt": prompt, "client_id": client_id, "partial_execution_targets": [node_id],
                   "extra_data": {"extra_pnginfo": pnginfo}}
        status, data = await post_prompt(server, payload)
        if status == 200 and isinstance(data, dict) and data.get("prompt_id"):
            for job in jobs:
                manager.mark_resume_pending(job.id, data["prompt_id"])
            data["jobs"] = [j.id for j in jobs]
        return web.json_response(data, status=status)


# ---- a job's own files --------------------------------------------------------------------------------------
def _inside(path, folder: str) -> str | None:
    """The real path of `path` if it is a regular file (not a link) inside `folder`, else None."""
    if not isinstance(path, str) or not path or not folder:
        return None
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    real, root = os.path.realpath(path), os.path.realpath(folder)
    try:
        if os.path.commonpath([real, root]) != root:
            return None
    except ValueError:  # other drive (Windows)
        return None
    return real


def job_files(job) -> dict[str, str]:
    """{kind: real path} of the job's output files that exist and lie where the pack writes them."""
    dirs = service().dirs
    out = {}
    for kind in FILE_KINDS:
        folder = dirs.bundles if kind == "bundle" else dirs.loras
        real = _inside(job.outputs.get(kind), folder) if job.state == "done" else None
        if real and real.endswith(".safetensors"):
            out[kind] = real
    return out


def _preview_folder(job) -> str:
    return os.path.join(service().dirs.previews, job.id) if service().dirs.previews else ""


def job_previews(job) -> list[str]:
    folder = _preview_folder(job)
    if not folder or not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if PREVIEW_NAME.match(n) and _inside(os.path.join(folder, n), folder))


def _url(job_id: str, tail: str) -> str:
    return f"/unziplora/jobs/{job_id}/files/{tail}"


@_json_errors
async def list_job_files(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    files = [{"kind": kind, "name": os.path.basename(p), "bytes": os.path.getsize(p), "url": _url(job.id, kind)}
             for kind, p in job_files(job).items()]
    folder = _preview_folder(job)
    files += [{"kind": "preview", "name": n, "bytes": os.path.getsize(os.path.join(folder, n)),
               "url": _url(job.id, f"previews/{n}")} for n in job_previews(job)]
    return web.json_response({"job": job.id, "state": job.state, "files": files})


def _send(path: str) -> web.FileResponse:
    name = os.path.basename(path)
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{name}"',
                                           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


@_json_errors
async def get_job_file(request: web.Request) -> web.StreamResponse:
    job = _job_or_404(request)
    kind = request.match_info["kind"]
    if kind not in FILE_KINDS:
        raise BadRequest(f"{kind[:40]!r} is not a file kind: content, style, bundle, or previews/<name>")
    if job.state != "done":
        return _error(409, f"job {job.id} is {job.state}: its files exist once it is done")
    path = job_files(job).get(kind)
    if path is None:
        return _error(404, f"job {job.id} has no {kind} file on this server (moved or deleted?)")
    return _send(path)


@_json_errors
async def get_job_preview(request: web.Request) -> web.StreamResponse:
    job = _job_or_404(request)
    name = request.match_info["filename"]
    if not PREVIEW_NAME.match(name):
        raise BadRequest(f"{name[:40]!r} is not a preview name: step_<n>_content|style|combined.png")
    folder = _preview_folder(job)
    path = _inside(os.path.join(folder, name), folder) if folder else None
    if path is None:
        return _error(404, f"job {job.id} has no preview {name}")
    return _send(path)


def register(routes) -> None:
    routes.get("/unziplora/batches")(list_batches)
    routes.post("/unziplora/batches/{batch_id}/cancel")(cancel_batch)
    routes.post("/unziplora/batches/{batch_id}/resume")(_json_errors(resume_batch))
    routes.get("/unziplora/jobs/{job_id}/files")(list_job_files)
    routes.get("/unziplora/jobs/{job_id}/files/previews/{filename}")(get_job_preview)
    routes.get("/unziplora/jobs/{job_id}/files/{kind}")(get_job_file)
