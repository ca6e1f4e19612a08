"""HTTP routes under /unziplora/ (ComfyUI also serves them under /api/unziplora/)."""

from __future__ import annotations

import copy
import logging

from aiohttp import ClientSession, web

from .runtime import service

log = logging.getLogger("unziplora")
_registered = False


def _job_or_404(job_id: str):
    job = service().manager.get(job_id)
    if job is None:
        raise web.HTTPNotFound(text=f'{{"error": "no job with id {job_id!r}"}}', content_type="application/json")
    return job


async def list_jobs(request: web.Request) -> web.Response:
    return web.json_response({"jobs": [j.public() for j in service().manager.list()]})


async def get_job(request: web.Request) -> web.Response:
    return web.json_response(_job_or_404(request.match_info["job_id"]).public())


async def cancel_job(request: web.Request) -> web.Response:
    job = _job_or_404(request.match_info["job_id"])
    if job.state not in ("queued", "running", "cancelling"):
        return web.json_response({"error": f"job {job.id} is {job.state}: only queued or running jobs can be cancelled",
                                  "job": job.public()}, status=409)
    return web.json_response(service().manager.cancel(job.id).public())


def resume_prompt_for(job) -> dict:
    """The job's original API prompt (the train node learns what to resume from the extra data, resume_extra)."""
    if not job.resumable:
        why = ("it has no checkpoint yet" if job.checkpoint is None else
               "its graph was not recorded" if job.resume_prompt is None else f"it is {job.state}")
        raise ValueError(f"job {job.id} cannot be resumed: {why}")
    prompt = copy.deepcopy(job.resume_prompt)
    node_id = str(job.info.get("node_id"))
    if node_id not in prompt:
        raise ValueError(f"job {job.id} cannot be resumed: its train node {node_id} is not in the recorded graph")
    for node in prompt.values():
        # ComfyUI writes its cache fingerprint into the prompt it executes; a stale one would let the re-queued
        # graph be served from the cache (a second resume of the same job would start nothing)
        if isinstance(node, dict):
            node.pop("is_changed", None)
        # graphs recorded before resume moved to the extra data carried it as an input
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            node["inputs"].pop("resume_from", None)
    return prompt


def resume_extra(job) -> dict:
    """extra_data for the re-queued prompt: which job the train node resumes, and the workflow it belongs to."""
    from .train import RESUME_KEY

    pnginfo = {RESUME_KEY: {str(job.info.get("node_id")): job.id}}
    if job.info.get("workflow_id"):
        # the resumed job stays linked to the same workflow's node (only the id: the graph is not needed)
        pnginfo["workflow"] = {"id": job.info["workflow_id"]}
    return {"extra_pnginfo": pnginfo}


async def resume_job(request: web.Request) -> web.Response:
    job = _job_or_404(request.match_info["job_id"])
    try:
        prompt = resume_prompt_for(job)
    except ValueError as e:
        return web.json_response({"error": str(e), "job": job.public()}, status=409)
    from server import PromptServer

    body = await request.json() if request.can_read_body else {}
    server = PromptServer.instance
    # Queue it through ComfyUI's own /prompt handler (validation, numbering, history) over loopback.
    host = server.address if server.address not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
    host = host.split(",")[0]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{server.port}/prompt"
    async with ClientSession() as session:
        # only the train node's branch: other outputs of the recorded workflow are not run again
        payload = {"prompt": prompt, "client_id": body.get("client_id"),
                   "partial_execution_targets": [str(job.info.get("node_id"))], "extra_data": resume_extra(job)}
        async with session.post(url, json=payload) as resp:
            data = await resp.json()
            return web.json_response(data, status=resp.status)


def register_routes() -> None:
    global _registered
    if _registered:
        return
    try:
        from server import PromptServer
    except ImportError:  # unit tests without a server
        return
    if PromptServer.instance is None:
        return
    routes = PromptServer.instance.routes
    routes.get("/unziplora/jobs")(list_jobs)
    routes.get("/unziplora/jobs/{job_id}")(get_job)
    routes.post("/unziplora/jobs/{job_id}/cancel")(cancel_job)
    routes.post("/unziplora/jobs/{job_id}/resume")(resume_job)
    _registered = True
