"""Thin V3 node classes and HTTP routes. Method code lives in ../unziplora, training in ../training."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io


class UnZipLoRAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return []
