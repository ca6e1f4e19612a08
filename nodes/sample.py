"""The sample image the templates' Load Image names, put into ComfyUI's input folder on a fresh install.

Copied, not served from the pack: the stock Load Image only lists (and validates against) files in input/, so a
template naming a file anywhere else fails before it runs. Copied only when absent: a user's own file of that
name is never replaced, and one the user deleted comes back only with the next start (nothing else is touched).
"""

from __future__ import annotations

import logging
import os
import shutil

log = logging.getLogger("unziplora")

SAMPLE_IMAGE = "unziplora_sample_cat.png"
SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example_workflows", SAMPLE_IMAGE)


def install_sample_image(input_dir: str | None = None) -> str | None:
    """Copy the sample into input_dir (ComfyUI's input folder by default) unless a file of that name is there.
    Returns the path written, or None when nothing was copied."""
    if input_dir is None:
        import folder_paths

        input_dir = folder_paths.get_input_directory()
    target = os.path.join(input_dir, SAMPLE_IMAGE)
    if os.path.lexists(target) or not os.path.isfile(SOURCE):
        return None
    try:
        os.makedirs(input_dir, exist_ok=True)
        tmp = f"{target}.{os.getpid()}.tmp"
        shutil.copyfile(SOURCE, tmp)
        if os.path.lexists(target):  # another process got there first: keep theirs
            os.remove(tmp)
            return None
        os.replace(tmp, target)
    except OSError as e:  # a read-only input folder must not stop the pack from loading
        log.warning("UnZipLoRA: could not copy the sample image to %s: %s", input_dir, e)
        return None
    return target
