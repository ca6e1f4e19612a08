"""How server paths are shown to browsers: relative to ComfyUI's own folders, never absolute."""

from __future__ import annotations

import os


class PathDisplay:
    """Shows server paths relative to ComfyUI's folders ("models/loras/unziplora/x.safetensors"), so job records
    and errors sent to browsers do not reveal where ComfyUI is installed. roots: [(absolute folder, label)]."""

    def __init__(self, roots):
        norm = [(os.path.abspath(r), label.rstrip("/")) for r, label in roots if r]
        self.roots = sorted(norm, key=lambda r: len(r[0]), reverse=True)  # the most specific folder first

    def path(self, value):
        if not isinstance(value, str) or not os.path.isabs(value):
            return value
        value = os.path.abspath(value)
        for root, label in self.roots:
            if value == root or value.startswith(root + os.sep):
                rel = os.path.relpath(value, root).replace(os.sep, "/")
                return label if rel == "." else f"{label}/{rel}"
        return os.path.basename(value)

    def text(self, value):
        if not isinstance(value, str):
            return value
        for root, label in self.roots:
            value = value.replace(root + os.sep, label + "/").replace(root, label)
        return value
