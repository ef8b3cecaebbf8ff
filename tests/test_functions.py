"""The function table: every function's payload, parameter rules, prompts, styles and output sizes."""

from __future__ import annotations

import pytest

from wanx_imageedit.nodes.core import functions as f
from wanx_imageedit.nodes.core.errors import InputError
from wanx_imageedit.nodes.core.request import check_mask_rule

# Parameters each function takes, written out independently of the table (spec section 4.3).
SPEC_PARAMS = {
    "stylization_all": {"strength"},
    "stylization_local": set(),
    "description_edit": {"strength"},
    "description_edit_with_mask": set(),
    "remove_watermark": set(),
    "expand": {"top_scale", "bottom_scale", "left_scale", "right_scale"},
    "super_resolution": {"upscale_factor"},
    "colorization": set(),
    "doodle": {"is_sketch"},
    "control_cartoon_feature": set(),
}
COMMON = {"n", "seed", "watermark"}
ALL_PARAM_NAMES = sorted(set().union(*SPEC_PARAMS.values()))
VALID_VALUE = {"strength": 0.3, "top_scale": 1.5, "bottom_scale": 1.2, "left_scale": 1.1, "right_scale": 2.0,
               "upscale_factor": 3, "is_sketch": True}


def test_the_table_lists_exactly_the_ten_documented_functions() -> None:
    assert [fn.api_name for fn in f.FUNCTIONS] == list(SPEC_PARAMS)
    assert len({fn.node_id for fn in f.FUNCTIONS}) == 10


@pytest.mark.parametrize("fn", f.FUNCTIONS, ids=lambda fn: fn.api_name)
def test_each_function_sends_exactly_its_own_parameters(fn: f.EditFunction) -> None:
    mask = "data:image/png;base64,AAAA" if fn.needs_mask else None
    own = {name: VALID_VALUE[name] for name in SPEC_PARAMS[fn.api_name]}
    body = f.build_body(fn, prompt="p", base_image_url="data:image/png;base64,AAAA", mask_image_url=mask,
                        parameters={**own, "n": 2, "seed": 7, "watermark": True})
    assert body["model"] == "wanx2.1-imageedit"
    assert body["input"] == {"function": fn.api_name, "prompt": "p", "base_image_url": "data:image/png;base64,AAAA",
                             **({"mask_image_url": mask} if mask else {})}
    assert set(body["parameters"]) == SPEC_PARAMS[fn.api_name] | COMMON
    assert body["parameters"]["seed"] == 7 and body["parameters"]["n"] == 2
    for name, value in own.items():
        assert body["parameters"][name] == value


WRONG_PAIRS = [(fn.api_name, name) for fn in f.FUNCTIONS for name in ALL_PARAM_NAMES
               if name not in SPEC_PARAMS[fn.api_name]]


@pytest.mark.parametrize(("api", "name"), WRONG_PAIRS)
def test_a_parameter_sent_to_the_wrong_function_is_refused(api: str, name: str) -> None:
    with pytest.raises(InputError, match=f"does not take {name}"):
        f.build_parameters(f.lookup(api), {name: VALID_VALUE[name]})


def test_seed_is_sent_only_when_given_and_zero_is_a_real_seed() -> None:
    fn = f.lookup("colorization")
    assert "seed" not in f.build_parameters(fn, {})
    assert f.build_parameters(fn, {"seed": 0})["seed"] == 0
    assert f.build_parameters(fn, {"seed": f.SEED_MAX})["seed"] == f.SEED_MAX


@pytest.mark.parametrize(("name", "value", "rule"), [
    ("n", 0, "between 1 and 4"), ("n", 5, "between 1 and 4"), ("n", 1.5, "whole number"), ("n", True, "number"),
    ("seed", -1, "between 0 and 2147483647"), ("seed", 2**31, "between 0 and 2147483647"),
    ("watermark", 1, "true or false"),
])
def test_common_parameter_rules_name_the_rule_and_the_value(name: str, value: object, rule: str) -> None:
    with pytest.raises(InputError, match=rule) as caught:
        f.build_parameters(f.lookup("remove_watermark"), {name: value})
    assert name in str(caught.value) and str(value) in str(caught.value)


@pytest.mark.parametrize(("api", "name", "bad"), [
    ("expand", "top_scale", 0.99), ("expand", "right_scale", 2.01), ("super_resolution", "upscale_factor", 5),
    ("super_resolution", "upscale_factor", 2.5), ("description_edit", "strength", 1.1), ("doodle", "is_sketch", "yes"),
])
def test_function_parameter_ranges(api: str, name: str, bad: object) -> None:
    with pytest.raises(InputError, match=name):
        f.build_parameters(f.lookup(api), {name: bad})


def test_defaults_are_sent_explicitly() -> None:
    assert f.build_parameters(f.lookup("expand"), {}) == {
        "top_scale": 1.0, "bottom_scale": 1.0, "left_scale": 1.0, "right_scale": 1.0, "n": 1, "watermark": False}


def test_mask_is_required_for_inpainting_and_refused_elsewhere() -> None:
    # The rule is checked once, when the request is prepared; build_body only assembles trusted values.
    with pytest.raises(InputError, match="needs a mask"):
        check_mask_rule(f.lookup("description_edit_with_mask"), has_mask=False)
    with pytest.raises(InputError, match="takes no mask"):
        check_mask_rule(f.lookup("expand"), has_mask=True)


def test_global_styles_make_the_documented_prompt() -> None:
    fn = f.lookup("stylization_all")
    assert f.build_prompt(fn, prompt="", style="french picture book") == "转换成法国绘本风格"
    assert f.build_prompt(fn, prompt="", style="gold foil art") == "转换成金箔艺术风格"
    assert f.build_prompt(fn, prompt="my own words", style="custom") == "my own words"
    with pytest.raises(InputError, match="choose style 'custom'"):
        f.build_prompt(fn, prompt="extra text", style="gold foil art")


def test_local_styles_name_the_object_and_the_style() -> None:
    fn = f.lookup("stylization_local")
    assert f.build_prompt(fn, prompt="房子", style="wooden") == "把房子变成木板风格"
    assert len(fn.styles.styles) == 8
    with pytest.raises(InputError, match="name the object"):
        f.build_prompt(fn, prompt=" ", style="ice")
    with pytest.raises(InputError, match="no style 'marble'"):
        f.build_prompt(fn, prompt="房子", style="marble")


def test_prompt_rules() -> None:
    assert f.build_prompt(f.lookup("super_resolution"), prompt="") == "图像超分。"
    assert f.build_prompt(f.lookup("colorization"), prompt="  ") == "图像上色。"
    assert f.build_prompt(f.lookup("description_edit_with_mask"), prompt="") == ""  # the guide: tiny objects
    with pytest.raises(InputError, match="needs a prompt"):
        f.build_prompt(f.lookup("expand"), prompt="")
    assert f.build_prompt(f.lookup("expand"), prompt="字" * 800) == "字" * 800
    with pytest.raises(InputError, match="at most 800 characters"):
        f.build_prompt(f.lookup("expand"), prompt="字" * 801)


def test_output_size_rules() -> None:
    sent = f.ImageSize(800, 600)
    assert f.output_size(f.lookup("colorization"), sent, {}) == sent
    assert f.output_size(f.lookup("super_resolution"), sent, {"upscale_factor": 3}) == (2400, 1800)
    grown = f.output_size(f.lookup("expand"), sent,
                          {"top_scale": 1.5, "bottom_scale": 1.5, "left_scale": 1.0, "right_scale": 2.0})
    assert grown == (1200, 900)


def test_lookup_accepts_api_names_and_keys() -> None:
    assert f.lookup("Expand") is f.lookup("expand")
    with pytest.raises(InputError, match="unknown edit function"):
        f.lookup("inpaint_everything")
