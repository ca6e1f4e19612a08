"""A live ComfyUI server for the tests, the main job and the benchmarks: start/stop helpers, an HTTP + websocket
client (the pytest fixtures built on it are in tests/conftest.py).

    handle = start_server(make_base_dir(tmp, checkpoint=ensure_tiny_checkpoint()))
    client = handle.client()
    with client.follow() as events:            # open the websocket before queueing: no event is missed
        prompt_id = client.queue(api_prompt)
        seen = events.until_done(prompt_id, timeout=120)
    client.history(prompt_id)
    handle.stop()                              # terminate, then kill, by PID

The server is ComfyUI's own main.py run with this repo's interpreter (the venv), on the CPU, on a free port,
with a temporary base directory whose custom_nodes/ holds a symlink to this pack and whose
models/checkpoints/ holds a symlink to the tiny SDXL checkpoint (scripts/tiny_sdxl.py).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
PACK_FOLDER = "comfyui-unziplora"  # the pack's folder name inside <base>/custom_nodes
HOST = "127.0.0.1"
READY_TIMEOUT = 120.0

_live_handles: list["ServerHandle"] = []


def _tiny_sdxl_module():
    name = "unziplora_scripts_tiny_sdxl"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "tiny_sdxl.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def comfy_dir() -> Path:
    """ComfyUI's directory ($COMFYUI_DIR, else what scripts/setup_dev.sh recorded): one definition, in tiny_sdxl."""
    return _tiny_sdxl_module().comfy_dir()


def ensure_tiny_checkpoint(cache_dir=None) -> Path:
    """scripts/tiny_sdxl.py's ensure_tiny_checkpoint (generated once, cached under $UNZIPLORA_CACHE)."""
    return _tiny_sdxl_module().ensure_tiny_checkpoint(cache_dir)


def frontend_args() -> list[str]:
    """``--front-end-root <dir>`` when $UNZIPLORA_FRONTEND_ROOT names one (host b's own frontend, see
    scripts/setup_dev.sh); otherwise ComfyUI serves the frontend installed in site-packages."""
    root = os.environ.get("UNZIPLORA_FRONTEND_ROOT")
    if not root:
        return []
    if not (Path(root) / "index.html").is_file():
        raise ServerError(f"UNZIPLORA_FRONTEND_ROOT={root} has no index.html: run `bash scripts/setup_dev.sh --host b`")
    return ["--front-end-root", str(root)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _symlink(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == Path(target):
            return
        raise FileExistsError(f"{link} already exists")
    link.symlink_to(target, target_is_directory=Path(target).is_dir())


def make_base_dir(base: Path, checkpoint: Path | None = None, pack: Path = REPO,
                  pack_folder: str = PACK_FOLDER) -> Path:
    """A ComfyUI --base-directory: custom_nodes/<pack_folder> -> pack, models/checkpoints/<ckpt> -> checkpoint."""
    base = Path(base)
    for sub in ("custom_nodes", "models/checkpoints", "models/loras", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if pack is not None:
        _symlink(Path(pack).resolve(), base / "custom_nodes" / pack_folder)
    if checkpoint is not None:
        checkpoint = Path(checkpoint).resolve()
        _symlink(checkpoint, base / "models" / "checkpoints" / checkpoint.name)
    return base


class ServerError(RuntimeError):
    pass


class ServerHandle:
    """One ComfyUI process. ``url`` is http://127.0.0.1:<port>; the log (stdout+stderr) is at ``log_path``."""

    def __init__(self, proc: subprocess.Popen, port: int, base_dir: Path, log_path: Path, log_file,
                 pack_folder: str = PACK_FOLDER):
        self.proc = proc
        self.pid = proc.pid
        self.host = HOST
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.base_dir = Path(base_dir)
        self.log_path = Path(log_path)
        self._log_file = log_file
        self.pack_folder = pack_folder
        self.start_s: float | None = None  # seconds from spawn until /object_info answered
        self.log_offset = 0  # where this process's output starts in log_path (logs may be appended to)
        self.start_kwargs: dict = {}  # what start_server was called with (for restart)

    # -- state
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """This process's output so far."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The log's last lines, without alembic's "setup plugin" chatter."""
        kept = [line for line in self.log().splitlines() if not line.startswith("setup plugin ")]
        return "\n".join(kept[-lines:])

    def pack_import_lines(self) -> list[str]:
        """The pack's lines in the "Import times for custom nodes" section of the log."""
        marker = os.sep + "custom_nodes" + os.sep + self.pack_folder
        out, in_section = [], False
        for line in self.log().splitlines():
            if "Import times for custom nodes" in line:
                in_section = True
                continue
            if in_section:
                if "seconds" not in line:
                    in_section = False
                    continue
                if line.rstrip().endswith(marker):
                    out.append(line.strip())
        return out

    def pack_error_lines(self, context: int = 40) -> list[str]:
        """Log lines about the pack failing (its warnings and the traceback before "Cannot import <pack>")."""
        folder = os.sep + "custom_nodes" + os.sep + self.pack_folder
        lines = self.log().splitlines()
        out: list[str] = []
        for i, line in enumerate(lines):
            if folder not in line or " seconds" in line:
                continue
            if line.startswith("Cannot import"):
                start = max(0, i - context)
                tb = [j for j in range(start, i) if lines[j].startswith("Traceback")]
                out.extend(lines[tb[-1] if tb else i:i])
            out.append(line)
        return out

    def pack_import_failed(self) -> bool:
        return any("IMPORT FAILED" in line for line in self.pack_import_lines())

    def client(self, client_id: str | None = None) -> "ComfyClient":
        return ComfyClient(self.url, client_id=client_id)

    # -- stopping (only this process, by PID)
    def _close_log(self):
        with contextlib.suppress(Exception):
            self._log_file.close()
        if self in _live_handles:
            _live_handles.remove(self)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, then SIGKILL. Returns the exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(10)
        self._close_log()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL at once (simulates a crash)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)
        self._close_log()
        return self.proc.returncode

    def restart(self, **overrides) -> "ServerHandle":
        """Stop this server (if still running) and start a new one on the same base directory (same args,
        env and port unless overridden). Returns the new handle."""
        self.stop()
        kwargs = {**self.start_kwargs, "port": self.port, **overrides}
        return start_server(self.base_dir, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- start-up
    def wait_ready(self, timeout: float = READY_TIMEOUT, check_pack: bool = True) -> "ServerHandle":
        t0 = time.monotonic()
        deadline = t0 + timeout
        client = self.client()
        while True:
            if not self.alive():
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} before it answered "
                                  f"(log {self.log_path}):\n{self.log_tail()}")
            try:
                argv = client.get_json("/system_stats", timeout=10)["system"]["argv"]
                # the answer must come from this process, not from another server that holds the port
                if self.alive() and str(self.base_dir) in argv and str(self.port) in argv:
                    client.object_info(timeout=30)
                    break
            except (urllib.error.URLError, ConnectionError, OSError, TimeoutError, RuntimeError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"ComfyUI did not answer /object_info within {timeout:.0f} s "
                                  f"(log {self.log_path}):\n{self.log_tail()}")
            time.sleep(0.25)
        if check_pack and self.pack_import_failed():
            errors = "\n".join(self.pack_error_lines())
            raise ServerError(f"ComfyUI could not import the pack {self.pack_import_lines()}:\n{errors}\n"
                              f"--- log tail ({self.log_path}):\n{self.log_tail(60)}")
        return self


def start_server(base_dir: Path, *, port: int | None = None, extra_args=(), extra_env: dict | None = None,
                 timeout: float = READY_TIMEOUT, check_pack: bool = True, log_path: Path | None = None,
                 python: str | None = None, pack_folder: str = PACK_FOLDER, wait: bool = True,
                 cpu: bool = True) -> ServerHandle:
    """Start ComfyUI on ``base_dir`` (see make_base_dir) and wait until /object_info answers.

    Raises ServerError with the log's tail when the process dies, does not answer within ``timeout``, or
    (``check_pack``) the log marks the pack's folder "IMPORT FAILED". ``wait=False`` returns at once.
    A port that turns out to be taken (a race with another process) is retried on a new free port.
    """
    comfy = comfy_dir()
    if not (comfy / "main.py").is_file():
        raise ServerError(f"no ComfyUI at {comfy}: run `bash scripts/setup_dev.sh` or set COMFYUI_DIR")
    base_dir = Path(base_dir)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if extra_env:
        env.update({k: str(v) for k, v in extra_env.items()})

    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        p = port if port is not None else free_port()
        lp = Path(log_path) if log_path else base_dir / f"comfyui-{p}.log"
        cmd = [python or sys.executable, str(comfy / "main.py"), *(["--cpu"] if cpu else []), "--listen", HOST, "--port", str(p),
               "--base-directory", str(base_dir), "--database-url", "sqlite:///:memory:", *frontend_args(),
               *map(str, extra_args)]
        log_file = open(lp, "ab")
        offset = log_file.tell()
        log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        log_file.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=str(comfy), env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        handle = ServerHandle(proc, p, base_dir, lp, log_file, pack_folder=pack_folder)
        handle.log_offset = offset
        handle.start_kwargs = dict(extra_args=tuple(extra_args), extra_env=extra_env, timeout=timeout,
                                   check_pack=check_pack, log_path=log_path, python=python, pack_folder=pack_folder,
                                   cpu=cpu)
        _live_handles.append(handle)
        if not wait:
            return handle
        try:
            handle.wait_ready(timeout, check_pack=check_pack)
        except ServerError:
            handle.stop()
            if attempt + 1 < attempts and "address already in use" in handle.log().lower():
                continue
            raise
        handle.start_s = time.monotonic() - t0
        return handle
    raise AssertionError("unreachable")


@atexit.register
def _stop_leftovers():  # a session aborted with ^C must not leave servers behind
    for handle in list(_live_handles):
        with contextlib.suppress(Exception):
            handle.kill()


# ------------------------------------------------------------------------------------------------ client


class PromptRejected(RuntimeError):
    """POST /prompt answered with an error status (validation failed)."""

    def __init__(self, status: int, body):
        self.status = status
        self.body = body
        super().__init__(f"/prompt answered {status}: {json.dumps(body)[:2000]}")


class ComfyClient:
    def __init__(self, url: str, client_id: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout

    # -- plain HTTP
    def request(self, method: str, path: str, data=None, timeout: float | None = None):
        """(status, body bytes, headers); error statuses are returned, not raised."""
        body = None
        headers = {}
        if data is not None:
            body = json.dumps(data).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers or {})

    def get_json(self, path: str, timeout: float | None = None):
        status, body, _ = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {body[:500]!r}")
        return json.loads(body)

    def post_json(self, path: str, data, timeout: float | None = None):
        """(status, parsed body or raw text)."""
        status, body, _ = self.request("POST", path, data, timeout=timeout)
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, body.decode(errors="replace")

    def object_info(self, node_class: str | None = None, timeout: float | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else ""),
                             timeout=timeout)

    def post_prompt(self, prompt: dict, extra_data: dict | None = None):
        """POST /prompt without raising: (status, body)."""
        payload = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            payload["extra_data"] = extra_data
        return self.post_json("/prompt", payload)

    def queue(self, prompt: dict, extra_data: dict | None = None) -> str:
        status, body = self.post_prompt(prompt, extra_data)
        if status != 200:
            raise PromptRejected(status, body)
        return body["prompt_id"]

    def history(self, prompt_id: str | None = None) -> dict:
        """/history/<id> -> that prompt's entry ({} when unknown); without an id, the whole history."""
        if prompt_id is None:
            return self.get_json("/history")
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def queue_state(self) -> dict:
        return self.get_json("/queue")

    def interrupt(self):
        return self.post_json("/interrupt", {})

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, body, _ = self.request("GET", f"/view?{q}")
        if status != 200:
            raise RuntimeError(f"/view {q} -> {status}")
        return body

    # -- websocket
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}"

    @contextlib.contextmanager
    def follow(self, timeout: float = 10.0):
        """An open websocket (EventFollower) for this client id; open it before queueing."""
        follower = EventFollower(self.ws_url(), connect_timeout=timeout)
        # the server greets every new socket with "status" once it is registered under our client id;
        # waiting for it means nothing queued after this point can be missed
        follower.until(lambda e: e.get("type") == "status", timeout)
        try:
            yield follower
        finally:
            follower.close()

    def run(self, prompt: dict, timeout: float = 120.0):
        """Queue, follow to the end, return (prompt_id, events, history entry)."""
        with self.follow() as events:
            prompt_id = self.queue(prompt)
            seen = events.until_done(prompt_id, timeout)
        return prompt_id, seen, self.history(prompt_id)


class EventFollower:
    """Collects JSON websocket messages ({"type", "data"}); binary frames (previews) are counted, not kept."""

    def __init__(self, url: str, connect_timeout: float = 10.0):
        import websocket  # websocket-client

        self._websocket = websocket
        self.ws = websocket.create_connection(url, timeout=connect_timeout)
        self.events: list[dict] = []
        self.binary_frames = 0

    def recv(self, timeout: float):
        """The next JSON event, or None when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.ws.settimeout(remaining)
            try:
                msg = self.ws.recv()
            except self._websocket.WebSocketTimeoutException:
                return None
            if isinstance(msg, bytes):
                self.binary_frames += 1
                continue
            event = json.loads(msg)
            self.events.append(event)
            return event

    def until(self, predicate, timeout: float) -> list[dict]:
        """Events up to and including the first one where predicate(event) holds; TimeoutError otherwise."""
        start = len(self.events)
        deadline = time.monotonic() + timeout
        while True:
            event = self.recv(deadline - time.monotonic())
            if event is None:
                types = [e.get("type") for e in self.events[start:]]
                raise TimeoutError(f"no matching websocket event within {timeout:.0f} s; saw {types[-30:]}")
            if predicate(event):
                return self.events[start:]

    def until_done(self, prompt_id: str, timeout: float = 120.0) -> list[dict]:
        """Events until ``executing`` with node None for ``prompt_id`` (sent after success and after errors)."""
        def done(e):
            d = e.get("data") or {}
            return e.get("type") == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id

        return self.until(done, timeout)

    def close(self):
        with contextlib.suppress(Exception):
            self.ws.close()


def events_of(events: list[dict], type_: str, prompt_id: str | None = None) -> list[dict]:
    """The ``data`` of each event of one type (optionally for one prompt)."""
    out = []
    for e in events:
        if e.get("type") == type_:
            d = e.get("data") or {}
            if prompt_id is None or d.get("prompt_id") == prompt_id:
                out.append(d)
    return out


# ------------------------------------------------------------------------------------- host differences
# Tests run on two hosts (scripts/test.sh): ComfyUI 0.3.75 + frontend 1.32.9 and 0.33.0 + 1.58.1. What a test
# expects differently on them comes from here; the facts themselves live in unziplora/compat.py.


def compat():
    """The pack's unziplora.compat module, as the tests import the pack (conftest: package unziplora_pack)."""
    import importlib

    return importlib.import_module("unziplora_pack.unziplora.compat")


def frontend_version() -> str:
    """The frontend the servers serve: $UNZIPLORA_FRONTEND_ROOT's package, else site-packages' ("" if none)."""
    import importlib.metadata

    root = os.environ.get("UNZIPLORA_FRONTEND_ROOT")
    if root:
        for dist in importlib.metadata.distributions(path=[str(Path(root).parents[1])]):
            if dist.metadata["Name"].lower().replace("_", "-") == "comfyui-frontend-package":
                return dist.version
        return "unknown"
    try:
        return importlib.metadata.version("comfyui-frontend-package")
    except importlib.metadata.PackageNotFoundError:
        return ""


def host_description() -> str:
    version = ".".join(map(str, compat().comfy_version()))
    return f"ComfyUI {version} at {comfy_dir()}, frontend {frontend_version() or 'none'}"


def unknown_node_error() -> str:
    """The error type POST /prompt answers for a class_type no node has."""
    return compat().unknown_node_error()


def starve_sampler_memory(monkeypatch) -> None:
    """Make comfy.samplers see no free memory, so cond and uncond run as separate batches ("low VRAM").

    Only the sampler's calls are answered with 0: model loading asks the same function and must still see the
    real amount. 0.3.75's samplers held the module as ``comfy.samplers.model_management``; 0.33.0 asks
    ``ModelPatcher.get_free_memory``, which asks ``comfy.model_management.get_free_memory``. Patching that
    function and looking two callers up covers both.
    """
    import comfy.model_management

    real = comfy.model_management.get_free_memory

    def get_free_memory(*args, **kwargs):
        frame = sys._getframe(1)
        for _ in range(2):
            if frame is None:
                break
            if frame.f_globals.get("__name__") == "comfy.samplers":
                return 0
            frame = frame.f_back
        return real(*args, **kwargs)

    monkeypatch.setattr(comfy.model_management, "get_free_memory", get_free_memory)
