"""UnZipLoRA for ComfyUI: the pack's entry point (V3). Node classes live in ./nodes, the method in ./unziplora."""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    # Imported here, not at module level, so the package imports without a running ComfyUI (unit tests).
    from .nodes import make_extension

    return make_extension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
