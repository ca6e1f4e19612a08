"""A clean stop for jobs when ComfyUI stops: SIGTERM (service managers, docker stop), Ctrl-C or a normal exit.

ComfyUI installs no handler of its own, so SIGTERM would end the process between two steps and the job would
come back "interrupted" from its last periodic checkpoint. Here the running job is told to stop, saves a
checkpoint at the step it reached (waiting at most UNZIPLORA_SHUTDOWN_WAIT seconds, default 10) and is written
to jobs.json as "interrupted", resumable; then the signal's previous behaviour runs (for the default: the
process ends by that signal, as before).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal

from . import runtime

log = logging.getLogger("unziplora")
_installed = False


def _wait_s() -> float:
    try:
        return max(0.0, float(os.environ.get("UNZIPLORA_SHUTDOWN_WAIT", "10")))
    except ValueError:
        return 10.0


def stop_jobs(reason: str) -> None:
    svc = runtime._service  # never created here: no service, no jobs to stop
    if svc is None:
        return
    stopped = svc.manager.shutdown(timeout=_wait_s())
    if stopped:
        log.warning("unziplora: %s: stopped job(s) %s; they are marked interrupted and can be resumed",
                    reason, ", ".join(stopped))


def install_shutdown_handler() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(stop_jobs, "ComfyUI is exiting")
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        try:
            stop_jobs("SIGTERM")
        finally:
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError) as e:  # not the main thread, or a platform without SIGTERM handlers
        log.info("unziplora: no SIGTERM handler (%s); a killed server marks its jobs interrupted at restart", e)
