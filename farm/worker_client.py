"""One ComfyUI worker over HTTP (standard library only): upload an image, queue a graph, follow its training
job, resume it after the worker restarted, and download the job's files through /unziplora/jobs/{id}/files."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid


class WorkerDown(ConnectionError):
    """The worker does not answer (killed, rebooting, network)."""


class WorkerRefused(RuntimeError):
    """The worker answered but refused or failed the graph: the message is the worker's own."""


def _node_errors_text(body) -> str:
    if not isinstance(body, dict):
        return str(body)[:2000]
    parts = []
    err = body.get("error")
    if isinstance(err, dict):
        parts.append(f"{err.get('message', '')} {err.get('details', '')}".strip())
    elif err:
        parts.append(str(err))
    for node_id, node in (body.get("node_errors") or {}).items():
        for e in node.get("errors", []) if isinstance(node, dict) else []:
            parts.append(f"node {node_id} ({node.get('class_type', '?')}): {e.get('message', '')} "
                         f"{e.get('details', '')}".strip())
    return "; ".join(p for p in parts if p) or json.dumps(body)[:2000]


class WorkerClient:
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    # ---- plumbing
    def _request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None,
                 timeout: float | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            raise WorkerDown(f"{self.url}: {e}") from None

    def get_json(self, path: str):
        status, body = self._request("GET", path)
        if status != 200:
            raise WorkerRefused(f"{self.url}{path} answered {status}: {body[:500]!r}")
        return json.loads(body)

    def post_json(self, path: str, payload) -> tuple[int, object]:
        status, body = self._request("POST", path, json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, body.decode(errors="replace")

    # ---- what the farm does
    def alive(self) -> bool:
        try:
            self._request("GET", "/system_stats", timeout=5)
            return True
        except WorkerDown:
            return False

    def upload_image(self, path: str, subfolder: str, name: str) -> str:
        """POST /upload/image (overwrite): the name LoadImage takes ('<subfolder>/<name>')."""
        boundary = uuid.uuid4().hex
        with open(path, "rb") as f:
            data = f.read()
        parts = []
        for key, value in (("subfolder", subfolder), ("type", "input"), ("overwrite", "true")):
            parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n{value}\r\n".encode())
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, body = self._request("POST", "/upload/image", b"".join(parts),
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=120)
        if status != 200:
            raise WorkerRefused(f"upload of {os.path.basename(path)} refused ({status}): {body[:300]!r}")
        answer = json.loads(body)
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def queue(self, prompt: dict, client_id: str) -> str:
        status, body = self.post_json("/prompt", {"prompt": prompt, "client_id": client_id})
        if status != 200 or not isinstance(body, dict) or not body.get("prompt_id"):
            raise WorkerRefused(_node_errors_text(body))
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id) or None  # written when the prompt ends

    def jobs(self) -> list[dict]:
        return self.get_json("/unziplora/jobs")["jobs"]

    def job(self, job_id: str) -> dict:
        return self.get_json(f"/unziplora/jobs/{job_id}")

    def resume(self, job_id: str, client_id: str) -> str:
        status, body = self.post_json(f"/unziplora/jobs/{job_id}/resume", {"client_id": client_id})
        if status != 200 or not isinstance(body, dict) or not body.get("prompt_id"):
            raise WorkerRefused(f"resume of job {job_id}: {_node_errors_text(body)}")
        return body["prompt_id"]

    def files(self, job_id: str) -> list[dict]:
        return self.get_json(f"/unziplora/jobs/{job_id}/files")["files"]

    def download(self, url_path: str, dest: str) -> int:
        """Stream one file to `dest` (fsynced). Returns its size."""
        req = urllib.request.Request(self.url + url_path)
        try:
            with urllib.request.urlopen(req, timeout=300) as r, open(dest, "wb") as f:
                size = 0
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except urllib.error.HTTPError as e:
            raise WorkerRefused(f"{url_path} answered {e.code}: {e.read()[:300]!r}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            raise WorkerDown(f"{self.url}: {e}") from None
        return size


def history_error(entry: dict) -> str:
    """The worker's own message for a prompt that failed."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error" and isinstance(data, dict):
            return f"{data.get('node_type', '?')} (node {data.get('node_id', '?')}): {data.get('exception_message', '')}".strip()
    return f"the prompt ended with status {entry.get('status', {}).get('status_str')}"


def wait_until(pred, timeout: float, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    return None
