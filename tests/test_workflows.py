"""Every file in workflows/ is valid against the node definitions and in sync with its generator:
node ids, input names, links, and widget values in range. (The host tests also run them.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wanx_imageedit.nodes.authoring import workflows
from wanx_imageedit.nodes.core.errors import InputError
from wanx_imageedit.nodes.core.functions import FUNCTIONS, build_prompt, node_inputs

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
OURS = {fn.node_id: fn for fn in FUNCTIONS}
# Core ComfyUI nodes the examples use, with their widget count in ComfyUI 0.3.64 (the host tests
# check these against the real /object_info).
CORE_WIDGETS = {"LoadImage": 2, "SaveImage": 1, "PreviewAny": 0, "RepeatImageBatch": 1, "ImageBlend": 2}
FILES = sorted(WORKFLOWS.glob("*.json"))


def test_there_is_one_workflow_per_function_and_two_chains() -> None:
    stems = {p.stem for p in FILES}
    assert {f"wanx_{fn.key.lower()}" for fn in FUNCTIONS} <= stems
    assert len([s for s in stems if "chain" in s]) >= 2
    for path in FILES:
        thumbnail = path.with_suffix(".jpg")
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG" and image.width >= 128


def test_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    workflows.write_all(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [p.name for p in FILES]
    for path in FILES:
        fresh = json.loads((tmp_path / path.name).read_text(encoding="utf-8"))
        assert json.loads(path.read_text(encoding="utf-8")) == fresh, (
            f"{path.name} is stale: run `wanx-imageedit make-workflows`")
    for sample in (tmp_path / "inputs").glob("*.png"):
        with Image.open(sample) as fresh, Image.open(WORKFLOWS / "inputs" / sample.name) as committed:
            assert np.array_equal(np.asarray(fresh), np.asarray(committed)), sample.name


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_is_valid_against_the_node_definitions(path: Path) -> None:
    flow = json.loads(path.read_text(encoding="utf-8"))
    nodes = {node["id"]: node for node in flow["nodes"]}
    for node in nodes.values():
        assert node["type"] in OURS or node["type"] in CORE_WIDGETS, f"{path.name}: unknown node {node['type']}"
        if node["type"] in OURS:
            _check_our_node(node)
        else:
            assert len(node["widgets_values"]) == CORE_WIDGETS[node["type"]], node["type"]
        if node["type"] == "LoadImage":
            assert (WORKFLOWS / "inputs" / node["widgets_values"][0]).is_file()
    for link_id, source, slot, target, target_slot, kind in flow["links"]:
        assert nodes[source]["outputs"][slot]["type"] == kind and link_id in nodes[source]["outputs"][slot]["links"]
        socket_in = nodes[target]["inputs"][target_slot]
        assert socket_in["link"] == link_id and socket_in["type"] in (kind, "*")
    assert any(node["type"] == "SaveImage" for node in nodes.values())


def _check_our_node(node: dict) -> None:
    fn = OURS[node["type"]]
    specs = node_inputs(fn)
    sockets = [s.name for s in specs if not s.is_widget]
    assert [i["name"] for i in node["inputs"]] == sockets
    assert all(i["link"] is not None for i in node["inputs"]), "image (and mask) must be connected"
    assert [o["name"] for o in node["outputs"]] == ["images", "report"]
    values = list(node["widgets_values"])
    by_name = {}
    for spec in specs:
        if not spec.is_widget:
            continue
        by_name[spec.name] = value = values.pop(0)
        if spec.control_after_generate:
            assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
        if spec.param is not None:
            spec.param.check(value)
        elif spec.socket == "COMBO":
            assert value in spec.options
    assert values == [], "extra widget values"
    try:
        build_prompt(fn, prompt=by_name["prompt"], style=by_name.get("style", "custom"))
    except InputError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"{node['type']}: {exc}")
