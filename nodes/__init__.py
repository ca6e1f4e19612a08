"""Thin V3 node classes and HTTP routes. Method code lives in ../unziplora, training in ../training."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .apply import UnZipLoRAApply
from .inspect import UnZipLoRAInspect
from .loaders import UnZipLoRALoader, UnZipLoRALoadBLoRA, UnZipLoRALoadFiles
from .prompts import UnZipLoRAPrompts
from .routes import register_routes
from .runtime import register_folders
from .sample import install_sample_image
from .score import UnZipLoRAScore
from .train import UnZipLoRATrain
from .train_folder import UnZipLoRATrainFolder


class UnZipLoRAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [UnZipLoRATrain, UnZipLoRATrainFolder, UnZipLoRALoader, UnZipLoRALoadFiles, UnZipLoRALoadBLoRA, UnZipLoRAApply,
                UnZipLoRAPrompts, UnZipLoRAInspect, UnZipLoRAScore]


def make_extension() -> UnZipLoRAExtension:
    # Here, not in on_load (0.3.75 never calls it): routes must exist before ComfyUI freezes its route table,
    # and models/unziplora must be known before the loader lists it.
    register_folders()
    register_routes()
    install_sample_image()  # the templates' Load Image names it
    return UnZipLoRAExtension()
