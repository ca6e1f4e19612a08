"""HTTP routes under /unziplora/ (ComfyUI also serves them under /api/unziplora/).

Every answer is built by a JSON encoder (web.json_response), bad input gets 400 with {"error": ...} naming
what was wrong, ids are checked against the job id format before any lookup, and request bodies are read up
to MAX_BODY bytes only. What each route accepts is listed in SECURITY.md.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging

from aiohttp import ClientSession, web

from ..training.jobs import ResumeRefused, valid_job_id
from ..unziplora.compat import prompt_server
from .runtime import service

log = logging.getLogger("unziplora")
_registered = False
MAX_BODY = 16 * 1024  # the largest body any route takes is {"client_id": "<id>"}
MAX_CLIENT_ID = 200
_resume_lock: asyncio.Lock | None = None  # one resume at a time: two concurrent POSTs cannot both queue one


class BadRequest(Exception):
    """A request a route refuses, answered {"error": message} with this status by _json_errors."""

    status = 400


class Unavailable(BadRequest):
    status = 503


def _error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _json_errors(handler):
    """Any failure answers JSON: 400 for bad input, 500 (without internals) for the pack's own faults."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except BadRequest as e:
            return _error(e.status, str(e))
        except web.HTTPException:
            raise
        except Exception:
            log.exception("unziplora: %s %s failed", request.method, request.path)
            return _error(500, f"{request.method} {request.path} failed inside UnZipLoRA; the server log has the "
                               "details")

    return wrapped


async def read_body(request: web.Request, allowed: tuple[str, ...] = ()) -> dict:
    """The JSON object in the body (empty body = {}), at most MAX_BODY bytes, only the `allowed` keys."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest(f"request body is {request.content_length} bytes; at most {MAX_BODY} are accepted")
    raw = bytearray()
    async for chunk in request.content.iter_chunked(4096):
        raw += chunk
        if len(raw) > MAX_BODY:
            raise BadRequest(f"request body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"request body is not JSON ({type(e).__name__} at byte "
                         f"{getattr(e, 'pos', getattr(e, 'start', '?'))}); send a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not a JSON {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise BadRequest(f"unknown field(s) {shown} in the request body; accepted: {', '.join(allowed) or 'none'}")
    return body


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not valid_job_id(job_id):
        raise BadRequest(f"{job_id[:40]!r} is not a job id: 12 lowercase hex digits")
    return job_id


def _job_or_404(request: web.Request):
    job_id = _job_id(request)
    job = service().manager.get(job_id)
    if job is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no job with id {job_id}"}), content_type="application/json")
    return job


def _public(job) -> dict:
    return service().manager.public(job)


@_json_errors
async def list_jobs(request: web.Request) -> web.Response:
    manager = service().manager
    return web.json_response({"jobs": [manager.public(j) for j in manager.list()], "warnings": manager.load_warnings})


@_json_errors
async def get_job(request: web.Request) -> web.Response:
    return web.json_response(_public(_job_or_404(request)))


@_json_errors
async def cancel_job(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    await read_body(request)
    if job.state not in ("queued", "running", "cancelling"):
        return _error(409, f"job {job.id} is {job.state}: only queued or running jobs can be cancelled",
                      job=_public(job))
    return web.json_response(_public(service().manager.cancel(job.id)))


@_json_errors
async def delete_checkpoints(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    await read_body(request)  # empty or {}: a field would be an option this route does not have
    try:
        freed = service().manager.delete_checkpoints(job.id)
    except ResumeRefused as e:
        return _error(409, str(e), job=_public(job))
    return web.json_response({"deleted_bytes": freed, "job": _public(job)})


def resume_prompt_for(job) -> dict:
    """The job's original API prompt (the train node learns what to resume from the extra data, resume_extra)."""
    if not job.resumable:
        why = ("it was already resumed as job " + job.continued_by if job.continued_by else
               "it has no checkpoint" if job.checkpoint is None else
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
    from .train_cache import FORCE_KEY, force_value

    prompt[node_id].setdefault("inputs", {})[FORCE_KEY] = force_value()  # an explicit run: past ComfyUI's cache
    return prompt


def _prompt_waiting(server, prompt_id: str | None) -> bool:
    """Whether the prompt is still queued or running (a resume that is on its way)."""
    if not prompt_id:
        return False
    running, queued = server.prompt_queue.get_current_queue_volatile()
    return any(len(item) > 1 and item[1] == prompt_id for item in list(running) + list(queued))


def resume_extra(job) -> dict:
    """extra_data for the re-queued prompt: which job the train node resumes, and the workflow it belongs to."""
    from .train import RESUME_KEY

    pnginfo = {RESUME_KEY: {str(job.info.get("node_id")): job.id}}
    if job.info.get("workflow_id"):
        # the resumed job stays linked to the same workflow's node (only the id: the graph is not needed)
        pnginfo["workflow"] = {"id": job.info["workflow_id"]}
    return {"extra_pnginfo": pnginfo}


def resume_lock() -> asyncio.Lock:
    """The one lock of every resume route (a job's, a batch's): a job's Resume and its batch's "resume all" posted
    at once cannot both queue that job again."""
    global _resume_lock
    if _resume_lock is None:
        _resume_lock = asyncio.Lock()
    return _resume_lock


async def resume_request(request: web.Request):
    """(client_id, prompt server) of a resume POST: the body may hold only client_id; Unavailable (503) without
    a server."""
    body = await read_body(request, allowed=("client_id",))
    client_id = body.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or len(client_id) > MAX_CLIENT_ID):
        raise BadRequest(f"client_id must be a string of at most {MAX_CLIENT_ID} characters, or null")
    server = prompt_server()
    if server is None:
        raise Unavailable("ComfyUI's prompt server is not running")
    return client_id, server


async def post_prompt(server, payload: dict) -> tuple[int, dict]:
    """Queues through ComfyUI's own /prompt over loopback (its validation, numbering and history, like any
    prompt): (status, answer)."""
    host = server.address if server.address not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
    host = host.split(",")[0]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{server.port}/prompt"
    async with ClientSession() as session, session.post(url, json=payload) as resp:
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            data = {"error": f"ComfyUI's /prompt answered {resp.status} without JSON"}
        return resp.status, data


async def resume_job(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    client_id, server = await resume_request(request)
    async with resume_lock():
        if job.continued_by:
            return _error(409, f"job {job.id} was already resumed: it continues as job {job.continued_by}",
                          continued_by=job.continued_by, job=_public(job))
        if _prompt_waiting(server, job.resume_pending):
            return _error(409, f"job {job.id} is already being resumed by prompt {job.resume_pending}",
                          prompt_id=job.resume_pending, job=_public(job))
        try:
            prompt = resume_prompt_for(job)
        except ValueError as e:
            return _error(409, str(e), job=_public(job))
        # only the train node's branch: other outputs of the recorded workflow are not run again
        payload = {"prompt": prompt, "client_id": client_id, "partial_execution_targets": [str(job.info.get("node_id"))],
                   "extra_data": resume_extra(job)}
        status, data = await post_prompt(server, payload)
        if status == 200 and isinstance(data, dict) and data.get("prompt_id"):
            service().manager.mark_resume_pending(job.id, data["prompt_id"])
        return web.json_response(data, status=status)


def register_routes() -> None:
    global _registered
    if _registered:
        return
    server = prompt_server()
    if server is None:  # unit tests and scripts: no running server
        return
    routes = server.routes
    routes.get("/unziplora/jobs")(list_jobs)
    routes.get("/unziplora/jobs/{job_id}")(get_job)
    routes.post("/unziplora/jobs/{job_id}/cancel")(cancel_job)
    routes.post("/unziplora/jobs/{job_id}/resume")(_json_errors(resume_job))
    routes.delete("/unziplora/jobs/{job_id}/checkpoints")(delete_checkpoints)
    from . import batch_routes  # batches (Train Folder) and a job's own files

    batch_routes.register(routes)
    _registered = True
    from .shutdown import install_shutdown_handler

    install_shutdown_handler()
    try:
        service()  # read jobs.json now: what a damaged file made us skip is logged at start-up
    except Exception:
        log.exception("unziplora: could not start the job service")
