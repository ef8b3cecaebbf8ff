"""The ten ComfyUI nodes, one per function, built from the function table. A node translates
types: its schema comes from the table, and execute() hands the tensors to the core.

The V3 schema from ``comfy_api.latest``: no frozen version of it exists (``comfy_api.v0_0_2`` re-exports
``latest`` in 0.3.64 and in today's releases), so the pack names the one module every supported
ComfyUI has and uses only names in ``io.__all__`` of recent releases (the host tests load it)."""

from __future__ import annotations

import json
from typing import Any

from comfy_api.latest import ComfyExtension, io

from . import host
from .core import texts
from .core.errors import WanxError
from .core.functions import (
    CUSTOM_STYLE,
    FUNCTIONS,
    EditFunction,
    NodeInput,
    build_parameters,
    build_prompt,
    node_inputs,
)

CATEGORY = texts.CATEGORY


def _input(spec: NodeInput, fn: EditFunction) -> io.Input:
    param = spec.param
    if spec.socket == "IMAGE":
        return io.Image.Input(spec.name, tooltip=spec.help_en)
    if spec.socket == "MASK":
        return io.Mask.Input(spec.name, tooltip=spec.help_en)
    if spec.socket == "COMBO":
        return io.Combo.Input(spec.name, options=list(spec.options), default=spec.default, tooltip=spec.help_en)
    if spec.socket == "STRING":
        return io.String.Input(spec.name, multiline=True, default=spec.default, tooltip=spec.help_en)
    if spec.socket == "BOOLEAN":
        return io.Boolean.Input(spec.name, default=bool(spec.default), tooltip=spec.help_en, optional=spec.optional)
    assert param is not None  # every remaining input is a numeric parameter of the table
    if spec.socket == "INT":
        return io.Int.Input(spec.name, default=int(param.default), min=int(param.minimum or 0),
                            max=int(param.maximum or 0), step=int(param.step or 1), tooltip=param.help_en,
                            control_after_generate=spec.control_after_generate or None)
    return io.Float.Input(spec.name, default=float(param.default), min=param.minimum, max=param.maximum,
                          step=param.step, round=param.step, tooltip=param.help_en)


def _outputs(ports: tuple[texts.Port, ...]) -> list[io.Output]:
    """Every node of the pack outputs (IMAGE images, STRING report), named and described by texts."""
    images, report = ports
    return [io.Image.Output(images.name, display_name=images.name, tooltip=images.tooltip.en),
            io.String.Output(report.name, display_name=report.name, tooltip=report.tooltip.en)]


def schema_for(fn: EditFunction) -> io.Schema:
    node = texts.edit_node(fn)
    return io.Schema(
        node_id=fn.node_id, display_name=node.display_name.en, category=CATEGORY, description=node.description.en,
        inputs=[_input(spec, fn) for spec in node_inputs(fn)],
        outputs=_outputs(node.outputs),
    )


def node_class(fn: EditFunction) -> type[io.ComfyNode]:
    class WanxEditNode(io.ComfyNode):
        FUNCTION_SPEC = fn

        @classmethod
        def define_schema(cls) -> io.Schema:
            return schema_for(fn)

        @classmethod
        def validate_inputs(cls, **inputs: Any) -> bool | str:
            """Refuse bad widget values when the graph is queued, before anything is sent."""
            values = {p.name: inputs[p.name] for p in fn.all_params if inputs.get(p.name) is not None}
            try:
                build_parameters(fn, values)
                if isinstance(inputs.get("prompt"), str):
                    build_prompt(fn, prompt=inputs["prompt"], style=inputs.get("style") or CUSTOM_STYLE)
            except WanxError as exc:
                return str(exc)
            return True

        @classmethod
        async def execute(cls, image: Any, prompt: str, mask: Any = None, style: str = CUSTOM_STYLE,
                          use_cache: bool = True, **values: Any) -> io.NodeOutput:
            outcome, settings = await host.edit(fn, reuse=use_cache, image=image, mask=mask, prompt=prompt,
                                                style=style, values=values)
            report = json.dumps(outcome.report(currency=settings.currency), ensure_ascii=False, indent=1)
            # The report also goes to the UI, where the front end keeps the session's running cost.
            return io.NodeOutput(outcome.images_tensor(), report, ui={"wanx_report": [report]})

    WanxEditNode.__name__ = WanxEditNode.__qualname__ = fn.node_id
    return WanxEditNode


class WanxFetchTask(io.ComfyNode):
    """Recover the images of an earlier task (after a crash, a restart or a Cancel) at no cost."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        node = texts.FETCH_NODE
        (task_id,) = node.inputs
        return io.Schema(
            node_id=texts.FETCH_NODE_ID, display_name=node.display_name.en, category=CATEGORY,
            description=node.description.en,
            inputs=[io.String.Input(task_id.name, default="", tooltip=task_id.tooltip.en)],
            outputs=_outputs(node.outputs),
        )

    @classmethod
    def fingerprint_inputs(cls, task_id: str = "") -> str:
        # An empty id means "the newest unsaved task", which changes as tasks run.
        return task_id.strip() or host.newest_unrecovered_task() or ""

    @classmethod
    async def execute(cls, task_id: str = "") -> io.NodeOutput:
        recovered = await host.recover(task_id.strip() or None)
        return io.NodeOutput(recovered.images_tensor(), json.dumps(recovered.report(), ensure_ascii=False, indent=1))


NODE_CLASSES: tuple[type[io.ComfyNode], ...] = (*(node_class(fn) for fn in FUNCTIONS), WanxFetchTask)


class WanxImageEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)
