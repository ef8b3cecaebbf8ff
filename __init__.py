"""ComfyUI entry point. ComfyUI is imported only inside comfy_entrypoint(), so the pack (and
pytest, which imports this file) works without ComfyUI installed."""

import logging

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():  # noqa: ANN201 - the return type lives in ComfyUI
    from .nodes.edit_nodes import WanxImageEditExtension

    try:  # the settings panel's routes; the nodes work without them (key from the environment)
        from .nodes import web_routes

        web_routes.register()
    except Exception:
        logging.getLogger(__name__).exception("wanx_imageedit: the settings routes could not be registered")
    return WanxImageEditExtension()
