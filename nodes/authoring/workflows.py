"""The example workflows in `workflows/`, built from the function table so they always match
the nodes: one per function (LoadImage -> edit -> SaveImage) and two chains mixing cloud and
local steps. `wanx-imageedit make-workflows` rewrites them; a test keeps the files in sync."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..core import texts
from ..core.functions import FUNCTIONS, EditFunction, lookup, node_inputs
from .samples import sample_image, sample_mask

INPUTS_DIR = "inputs"  # workflows/inputs: copy these into ComfyUI/input
SEED = 20251125


def input_name(api_name: str) -> str:
    return f"wanx_sample_{api_name}.png"


@dataclass
class _Graph:
    nodes: list[dict[str, Any]] = field(default_factory=list)
    links: list[list[Any]] = field(default_factory=list)

    def add(self, node_type: str, *, widgets: Sequence[Any], inputs: Sequence[tuple[str, str]] = (),
            outputs: Sequence[tuple[str, str]] = (), title: str | None = None) -> int:
        node_id = len(self.nodes) + 1
        node: dict[str, Any] = {
            "id": node_id, "type": node_type, "pos": [60 + 380 * (node_id - 1), 120], "size": [340, 420],
            "flags": {}, "order": node_id - 1, "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": None} for name, kind in inputs],
            "outputs": [{"name": name, "type": kind, "links": [], "slot_index": slot}
                        for slot, (name, kind) in enumerate(outputs)],
            "properties": {"Node name for S&R": node_type}, "widgets_values": list(widgets),
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node_id

    def link(self, source: int, slot: int, target: int, input_name: str) -> None:
        link_id = len(self.links) + 1
        src, dst = self.nodes[source - 1], self.nodes[target - 1]
        kind = src["outputs"][slot]["type"]
        src["outputs"][slot]["links"].append(link_id)
        entry = next(i for i in dst["inputs"] if i["name"] == input_name)
        entry["link"] = link_id
        target_slot = [i["name"] for i in dst["inputs"]].index(input_name)
        self.links.append([link_id, source, slot, target, target_slot, kind])

    def to_json(self) -> dict[str, Any]:
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
                "version": 0.4}


def _edit_node(graph: _Graph, fn: EditFunction, values: Mapping[str, Any]) -> int:
    widgets: list[Any] = []
    sockets = []
    for spec in node_inputs(fn):
        if not spec.is_widget:
            sockets.append((spec.name, spec.socket))
            continue
        widgets.append(values.get(spec.name, spec.default))
        if spec.control_after_generate:
            widgets.append("fixed")  # a fixed seed: queuing again unchanged is served from ComfyUI's cache
    images, report = texts.OUTPUTS
    return graph.add(fn.node_id, widgets=widgets, inputs=sockets,
                     outputs=[(images.name, "IMAGE"), (report.name, "STRING")],
                     title=texts.edit_node(fn).display_name.en)


def _example_values(fn: EditFunction) -> dict[str, Any]:
    example = fn.example
    values: dict[str, Any] = {"prompt": example.prompt, "seed": SEED, **example.values}
    if fn.styles is not None:
        values["style"] = example.style
    return values


def _load(graph: _Graph, filename: str) -> int:
    return graph.add("LoadImage", widgets=[filename, "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")])


def _save(graph: _Graph, prefix: str) -> int:
    return graph.add("SaveImage", widgets=[prefix], inputs=[("images", "IMAGE")])


def _report(graph: _Graph) -> int:
    return graph.add("PreviewAny", widgets=[], inputs=[("source", "*")], title="Task report")


def single(fn: EditFunction) -> dict[str, Any]:
    graph = _Graph()
    load = _load(graph, input_name(fn.api_name))
    node = _edit_node(graph, fn, _example_values(fn))
    save = _save(graph, f"wanx/{fn.api_name}")
    report = _report(graph)
    graph.link(load, 0, node, "image")
    if fn.needs_mask:
        graph.link(load, 1, node, "mask")  # the sample's transparent area: LoadImage's MASK is 1 - alpha
    graph.link(node, 0, save, "images")
    graph.link(node, 1, report, "source")
    return graph.to_json()


def chain_inpaint_expand_upscale() -> dict[str, Any]:
    """Inpaint -> expand -> super-resolution -> save: three cloud steps in a row."""
    graph = _Graph()
    load = _load(graph, input_name("description_edit_with_mask"))
    inpaint_fn = lookup("description_edit_with_mask")
    inpaint = _edit_node(graph, inpaint_fn, _example_values(inpaint_fn))
    expand = _edit_node(graph, lookup("expand"), {"prompt": "桌子上有一个蓝色花瓶的温馨房间。", "seed": SEED,
                                                  "top_scale": 1.25, "bottom_scale": 1.25, "left_scale": 1.25,
                                                  "right_scale": 1.25})
    upscale = _edit_node(graph, lookup("super_resolution"), {"prompt": "图像超分。", "seed": SEED, "upscale_factor": 2})
    save = _save(graph, "wanx/chain_inpaint_expand_upscale")
    graph.link(load, 0, inpaint, "image")
    graph.link(load, 1, inpaint, "mask")
    graph.link(inpaint, 0, expand, "image")
    graph.link(expand, 0, upscale, "image")
    graph.link(upscale, 0, save, "images")
    return graph.to_json()


def chain_batch_colorize_blend() -> dict[str, Any]:
    """A batch of 3 colorized concurrently, then blended with the grayscale originals locally."""
    graph = _Graph()
    load = _load(graph, input_name("colorization"))
    batch = graph.add("RepeatImageBatch", widgets=[3], inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")])
    colorize = _edit_node(graph, lookup("colorization"),
                          {"prompt": "黄昏的天空，金色的草地，红色的房子。", "seed": SEED})
    blend = graph.add("ImageBlend", widgets=[0.35, "normal"], inputs=[("image1", "IMAGE"), ("image2", "IMAGE")],
                      outputs=[("IMAGE", "IMAGE")])
    save = _save(graph, "wanx/chain_batch_colorize_blend")
    report = _report(graph)
    graph.link(load, 0, batch, "image")
    graph.link(batch, 0, colorize, "image")
    graph.link(colorize, 0, blend, "image1")
    graph.link(batch, 0, blend, "image2")
    graph.link(blend, 0, save, "images")
    graph.link(colorize, 1, report, "source")
    return graph.to_json()


def all_workflows() -> dict[str, dict[str, Any]]:
    """File stem -> UI-format workflow. The stems are what ComfyUI's Templates browser shows."""
    flows = {f"wanx_{fn.key.lower()}": single(fn) for fn in FUNCTIONS}
    flows["wanx_chain_inpaint_expand_upscale"] = chain_inpaint_expand_upscale()
    flows["wanx_chain_batch_colorize_blend"] = chain_batch_colorize_blend()
    return flows


def sample_file(fn: EditFunction) -> Image.Image:
    """The LoadImage input of ``fn``: its sample, with the inpainting mask carried as transparency."""
    image = sample_image(fn.example.scene)
    mask = sample_mask(fn.example.scene)
    if mask is None:
        return image
    rgba = image.convert("RGBA")
    rgba.putalpha(mask.point(lambda v: 255 - v))  # transparent where the mask is white
    return rgba


def _thumbnail(title: str, picture: Image.Image) -> Image.Image:
    thumb = picture.convert("RGB")
    thumb.thumbnail((320, 320))
    canvas = Image.new("RGB", (320, 360), "white")
    canvas.paste(thumb, ((320 - thumb.width) // 2, 0))
    ImageDraw.Draw(canvas).text((10, 335), title, fill="black")
    return canvas


def write_all(folder: Path) -> list[Path]:
    """Write every workflow (.json), its thumbnail (.jpg) and the sample inputs."""
    written = []
    (folder / INPUTS_DIR).mkdir(parents=True, exist_ok=True)
    for fn in FUNCTIONS:
        path = folder / INPUTS_DIR / input_name(fn.api_name)
        sample_file(fn).save(path)
        written.append(path)
    titles = {f"wanx_{fn.key.lower()}": (texts.edit_node(fn).display_name.en, fn) for fn in FUNCTIONS}
    titles["wanx_chain_inpaint_expand_upscale"] = ("Inpaint > Expand > Upscale", lookup("description_edit_with_mask"))
    titles["wanx_chain_batch_colorize_blend"] = ("Batch colorize + blend", lookup("colorization"))
    for stem, workflow in all_workflows().items():
        path = folder / f"{stem}.json"
        path.write_text(json.dumps(workflow, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        title, first = titles[stem]  # the thumbnail shows the sample of the workflow's first function
        _thumbnail(title, sample_image(first.example.scene)).save(folder / f"{stem}.jpg", quality=85)
        written += [path, folder / f"{stem}.jpg"]
    return written
