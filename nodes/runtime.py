"""The pack's one training service per ComfyUI process, wired to ComfyUI's folders and websocket."""

from __future__ import annotations

import logging
import os
import threading

from ..training import host_ram
from ..training.jobs import JobManager
from ..training.paths import PathDisplay
from ..training.service import OutputDirs, TrainingService
from ..unziplora.compat import prompt_server

log = logging.getLogger("unziplora")
_lock = threading.Lock()
_service: TrainingService | None = None

MODEL_FOLDER = "unziplora"  # models/unziplora: bundles (mergers + masks), listed by the loader node


def register_folders() -> OutputDirs:
    import folder_paths

    bundles = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = ([bundles], {".safetensors"})
    loras = os.path.join(folder_paths.get_folder_paths("loras")[0], MODEL_FOLDER)
    output = folder_paths.get_output_directory()
    checkpoints = os.path.join(output, MODEL_FOLDER, "checkpoints")
    previews = os.path.join(output, MODEL_FOLDER, "previews")
    return OutputDirs(loras=loras, bundles=bundles, checkpoints=checkpoints, previews=previews,
                      previews_subfolder=f"{MODEL_FOLDER}/previews")


def path_display() -> PathDisplay:
    """Paths as ComfyUI's folder names ("models/loras/unziplora/x.safetensors"): what browsers are shown."""
    import folder_paths

    roots = [(folder_paths.models_dir, "models"), (folder_paths.get_output_directory(), "output"),
             (folder_paths.get_input_directory(), "input"), (folder_paths.get_temp_directory(), "temp"),
             (folder_paths.get_user_directory(), "user")]
    for folder in ("loras", MODEL_FOLDER):  # extra_model_paths.yaml may put these anywhere
        roots += [(p, folder if folder == "loras" else f"models/{folder}")
                  for p in folder_paths.get_folder_paths(folder) if not p.startswith(folder_paths.models_dir)]
    return PathDisplay(roots)


def _emit(event: str, data: dict) -> None:
    server = prompt_server()
    if server is not None:
        server.send_sync(event, data, None)  # None: every browser tab sees every job


def _resume_prompt_waiting(prompt_id: str) -> bool:
    """Whether a resume prompt is still queued or running in ComfyUI (what DELETE of its checkpoint must respect)."""
    from .routes import _prompt_waiting

    server = prompt_server()
    return server is not None and _prompt_waiting(server, prompt_id)


def service() -> TrainingService:
    global _service
    with _lock:
        if _service is None:
            import folder_paths

            dirs = register_folders()
            state = os.path.join(folder_paths.get_user_directory(), "unziplora", "jobs.json")
            manager = JobManager(state, emit=_emit, checkpoint_root=dirs.checkpoints, display=path_display(),
                                 after_job=host_ram.return_freed_memory)
            manager.prompt_waiting = _resume_prompt_waiting
            _service = TrainingService(manager, dirs)
        return _service
