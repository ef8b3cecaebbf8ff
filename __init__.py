"""ComfyUI entry point. ComfyUI is imported only inside comfy_entrypoint(), so the pack (and
pytest, which imports this file) works without ComfyUI installed."""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():  # noqa: ANN201 - the return type lives in ComfyUI
    from .nodes.edit_nodes import WanxImageEditExtension

    return WanxImageEditExtension()
