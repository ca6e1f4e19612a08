"""A stand-in for a ComfyUI worker with the pack, speaking the HTTP the farm uses (standard library only).

It "trains" a job in `train_s` seconds in a thread, then answers the prompt's history with the job id and serves
three files through /unziplora/jobs/{id}/files. stop() closes the socket (a dead worker); a new FakeWorker on
the same port with the same `state` dict is the worker restarted: its running jobs come back interrupted and
resumable, as the pack's jobs.json does."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeWorker:
    def __init__(self, port: int = 0, state: dict | None = None, train_s: float = 1.0, models=("tiny.safetensors",)):
        self.state = state if state is not None else {"jobs": {}, "history": {}, "uploads": []}
        for job in self.state["jobs"].values():  # a restart: whatever ran is interrupted
            if job["state"] in ("queued", "running"):
                job["state"], job["resumable"] = "interrupted", True
        self.state["history"] = {}
        self.train_s, self.models = train_s, models
        self.queue: list[str] = []
        self._stopped = threading.Event()
        worker = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload, raw: bytes | None = None):
                body = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                worker._get(self)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                worker._post(self, self.rfile.read(length))

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self._stopped.set()
        self.server.shutdown()
        self.server.server_close()

    # ---- routes
    def _get(self, h):
        path = h.path.split("?")[0].removeprefix("/api")
        jobs = self.state["jobs"]
        if path == "/system_stats":
            return h._send(200, {"system": {}})
        if path == "/queue":
            return h._send(200, {"queue_running": [[0, p] for p in self.queue[:1]],
                                 "queue_pending": [[0, p] for p in self.queue[1:]]})
        m = re.fullmatch(r"/history/(\w[\w-]*)", path)
        if m:
            entry = self.state["history"].get(m.group(1))
            return h._send(200, {m.group(1): entry} if entry else {})
        if path == "/unziplora/jobs":
            return h._send(200, {"jobs": list(jobs.values())})
        m = re.fullmatch(r"/unziplora/jobs/([0-9a-f]{12})(/files(?:/(\w+))?)?", path)
        if m and m.group(1) in jobs:
            job = jobs[m.group(1)]
            if not m.group(2):
                return h._send(200, job)
            if not m.group(3):
                files = [{"kind": k, "name": f"{job['info']['output_name']}_{k}.safetensors", "bytes": 9,
                          "url": f"/unziplora/jobs/{job['id']}/files/{k}"} for k in ("content", "style", "bundle")]
                return h._send(200, {"files": files if job["state"] == "done" else []})
            return h._send(200, None, raw=f"{job['id']}:{m.group(3)}".encode())
        return h._send(404, {"error": "not found"})

    def _post(self, h, body: bytes):
        path = h.path.removeprefix("/api")
        if path == "/upload/image":
            name = re.search(rb'filename="([^"]+)"', body).group(1).decode()
            self.state["uploads"].append(name)
            return h._send(200, {"name": name, "subfolder": "unziplora_farm", "type": "input"})
        data = json.loads(body or b"{}")
        if path == "/prompt":
            graph = data["prompt"]
            ckpt = next(n["inputs"]["ckpt_name"] for n in graph.values() if n["class_type"] == "CheckpointLoaderSimple")
            if ckpt not in self.models:
                return h._send(400, {"error": {"message": "Prompt outputs failed validation"}, "node_errors": {
                    "1": {"class_type": "CheckpointLoaderSimple", "errors": [
                        {"message": "Value not in list", "details": f"ckpt_name: '{ckpt}' not in {list(self.models)}"}]}}})
            train = next(k for k, n in graph.items() if n["class_type"] == "UnZipLoRATrain")
            return h._send(200, {"prompt_id": self._start(graph, train, graph[train]["inputs"]["name"])})
        m = re.fullmatch(r"/unziplora/jobs/([0-9a-f]{12})/resume", path)
        if m:
            old = self.state["jobs"][m.group(1)]
            if not old.get("resumable") or old.get("continued_by"):
                return h._send(409, {"error": "not resumable"})
            return h._send(200, {"prompt_id": self._start(old["graph"], old["train"], old["info"]["requested_name"],
                                                           resumed_from=old["id"])})
        return h._send(404, {"error": "not found"})

    def _start(self, graph, train, name, resumed_from=None) -> str:
        pid = uuid.uuid4().hex
        job = {"id": uuid.uuid4().hex[:12], "state": "running", "step": 0, "total": 10, "loss": 0.25,
               "it_per_s": 10 / self.train_s, "created": time.time(), "resumed_from": resumed_from,
               "continued_by": None, "resumable": False, "graph": graph, "train": train,
               "info": {"requested_name": name, "output_name": name,
                        "content_prompt": graph[train]["inputs"]["content_prompt"]}}
        if resumed_from:
            self.state["jobs"][resumed_from]["continued_by"] = job["id"]
        self.state["jobs"][job["id"]] = job
        self.queue.append(pid)

        def run():
            end = time.time() + self.train_s
            while time.time() < end:
                if self._stopped.is_set():
                    return  # killed: the job stays "running" until the restart marks it interrupted
                job["step"] = min(9, int(10 * (1 - (end - time.time()) / self.train_s)))
                time.sleep(0.05)
            job.update(state="done", step=10)
            self.queue.remove(pid)
            self.state["history"][pid] = {"status": {"status_str": "success", "completed": True, "messages": []},
                                          "outputs": {train: {"unziplora_job": [job["id"]]}}}

        threading.Thread(target=run, daemon=True).start()
        return pid
