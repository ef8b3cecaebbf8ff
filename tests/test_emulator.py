"""Loopback HTTP tests of the DashScope wanx2.1-imageedit emulator (no mocks), plus an SDK
fidelity test: the official `dashscope` 2.0.2 SDK must work against it unchanged, the faults a
test of money needs (issue 10), the benchmark's seams and counters, and its command line."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image, ImageDraw

from pack_import import REPO_ROOT
from wanx_imageedit.nodes.emulator import (
    MODEL,
    Emulator,
    Job,
    LoggedRequest,
    add_arguments,
    render_result,
    validate_job,
)
from wanx_imageedit.nodes.emulator.rules import ApiError, beijing_time

KEY = "sk-emulator-key"
# Fast lifecycle; the task API limit is raised because the helpers poll every 30 ms.
FAST: dict[str, Any] = {"running_s": (0.2, 0.3), "pending_s": 0.05, "task_api_qps": 100}
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"}
BEIJING_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}$")


# ---- fixtures and helpers ----------------------------------------------------------------


def image_bytes(width: int = 512, height: int = 512, *, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A small picture with some structure, so effects are visible."""
    image = Image.new("RGB", (width, height), (120, 80, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 8, height // 8, width // 2, height // 2), fill=(30, 160, 220))
    draw.ellipse((width // 2, height // 2, width - 10, height - 10), fill=(240, 230, 20))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def mask_uri(width: int = 512, height: int = 512) -> str:
    """White (edit) right half, black (keep) left half."""
    mask = Image.new("RGB", (width, height), (0, 0, 0))
    ImageDraw.Draw(mask).rectangle((width // 2, 0, width - 1, height - 1), fill=(255, 255, 255))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


BASE_PNG = image_bytes()
BASE = data_uri(BASE_PNG)


def make_body(function: str = "description_edit", prompt: str = "make her hair red", *, base: str = BASE,
              mask: str | None = None, **params: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {"function": function, "prompt": prompt, "base_image_url": base}
    if mask is not None:
        inputs["mask_image_url"] = mask
    return {"model": MODEL, "input": inputs, "parameters": params}


class Api:
    """A thin raw-HTTP client, so each test states exactly what is sent."""

    def __init__(self, emulator: Emulator) -> None:
        self.emu = emulator
        self.http = requests.Session()

    def headers(self, *, key: str | None = KEY, async_header: bool = True) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if async_header:
            headers["X-DashScope-Async"] = "enable"
        return headers

    def create(self, body: Any, **header_opts: Any) -> requests.Response:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        return self.http.post(f"{self.emu.base_url}/services/aigc/image2image/image-synthesis",
                              data=data, headers=self.headers(**header_opts), timeout=10)

    def create_ok(self, body: dict[str, Any]) -> str:
        response = self.create(body)
        assert response.status_code == 200, response.text
        return response.json()["output"]["task_id"]

    def get(self, path: str, **header_opts: Any) -> requests.Response:
        return self.http.get(f"{self.emu.base_url}{path}", headers=self.headers(async_header=False, **header_opts),
                             timeout=10)

    def query(self, task_id: str) -> dict[str, Any]:
        response = self.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def cancel(self, task_id: str, **header_opts: Any) -> requests.Response:
        return self.http.post(f"{self.emu.base_url}/tasks/{task_id}/cancel",
                              headers=self.headers(async_header=False, **header_opts), timeout=10)

    def wait(self, task_id: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            body = self.query(task_id)
            if body["output"]["task_status"] in TERMINAL or time.monotonic() > deadline:
                return body
            time.sleep(0.03)

    def download(self, url: str) -> requests.Response:
        return requests.get(url, timeout=10)  # no Authorization: result URLs are pre-signed


def png_of(response: requests.Response) -> Image.Image:
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    return image


def assert_error(response: requests.Response, status: int, code: str, message: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    assert body["request_id"]
    if message is not None:
        assert message in body["message"], body
    return body


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(submit_rps=100, **FAST) as emulator:
        yield emulator


@pytest.fixture
def api(emu: Emulator) -> Api:
    return Api(emu)


# ---- the happy path ----------------------------------------------------------------------


def test_create_query_download_roundtrip(emu: Emulator, api: Api) -> None:
    response = api.create(make_body(n=2, seed=7, strength=0.8))
    assert response.status_code == 200
    created = response.json()
    assert created["output"]["task_status"] == "PENDING"
    task_id = created["output"]["task_id"]
    assert created["request_id"] and task_id
    assert emu.created_count == 1

    body = api.wait(task_id)
    output = body["output"]
    assert output["task_status"] == "SUCCEEDED"
    for key in ("submit_time", "scheduled_time", "end_time"):
        assert BEIJING_TIME.match(output[key]), output[key]
    assert output["submit_time"] <= output["scheduled_time"] <= output["end_time"]
    assert output["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
    assert body["usage"] == {"image_count": 2}
    urls = [r["url"] for r in output["results"]]
    # Signed like OSS links: the object's path, then when the link expires and its signature.
    assert [url.partition("?")[0] for url in urls] == [f"http://127.0.0.1:{emu.port}/results/{task_id}/{i}.png"
                                                       for i in range(2)]
    assert all(re.fullmatch(r"[^?]+\?Expires=\d+&Signature=[\w-]+", url) for url in urls), urls
    images = [png_of(api.download(url)) for url in urls]
    assert all(image.size == (512, 512) for image in images)
    assert emu.task_status(task_id) == "SUCCEEDED"

    log = emu.requests
    assert [r.route for r in log][:2] == ["create", "query"] and log[-1].route == "download"
    create = log[0]
    assert create.method == "POST" and create.status == 200 and create.auth_present and create.auth_valid
    assert create.headers["X-DashScope-Async"] == "enable"
    summary = create.body["input"]["base_image_url"]  # the image itself is never kept in the log
    assert re.fullmatch(r"data:image/png;base64,<\d+ bytes sha256:[0-9a-f]{12}>", summary)
    assert create.body["parameters"] == {"n": 2, "seed": 7, "strength": 0.8}


def test_pending_and_running_shapes() -> None:
    # Long phases driven by advance(), so the test does not depend on machine speed.
    with Emulator(pending_s=10, running_s=(5, 5)) as emulator:
        api = Api(emulator)
        task_id = api.create_ok(make_body())
        pending = api.query(task_id)["output"]
        assert pending["task_status"] == "PENDING"
        assert "scheduled_time" not in pending and "end_time" not in pending
        assert pending["task_metrics"] == {"TOTAL": 1, "SUCCEEDED": 0, "FAILED": 0}
        emulator.advance(10)
        running = api.query(task_id)["output"]
        assert running["task_status"] == "RUNNING" and "scheduled_time" in running and "end_time" not in running
        emulator.advance(5)
        assert api.query(task_id)["output"]["task_status"] == "SUCCEEDED"


def test_key_never_logged(emu: Emulator, api: Api) -> None:
    api.create(make_body())
    api.create(make_body(), key="sk-some-other-emulator-key")
    state = requests.get(f"http://127.0.0.1:{emu.port}/_emulator/state", timeout=5).json()
    dumped = json.dumps(state) + repr(emu.requests)
    assert KEY not in dumped and "sk-some-other-emulator-key" not in dumped
    assert [(r["auth_present"], r["auth_valid"]) for r in state["requests"][:2]] == [(True, True), (True, False)]


# ---- routing, auth and the envelope -------------------------------------------------------


def test_auth_and_async_header(emu: Emulator, api: Api) -> None:
    assert_error(api.create(make_body(), key=None), 401, "InvalidApiKey", "No API-key provided.")
    assert_error(api.create(make_body(), key="sk-wrong-emulator-key"), 401, "InvalidApiKey",
                 "Invalid API-key provided.")
    assert_error(api.create(make_body(), async_header=False), 403, "AccessDenied",
                 "current user api does not support synchronous calls.")
    assert_error(api.get("/tasks/abc", key=None), 401, "InvalidApiKey", "No API-key provided.")
    assert_error(api.get("/tasks", key="sk-wrong-emulator-key"), 401, "InvalidApiKey")
    assert_error(api.cancel("abc", key=None), 401, "InvalidApiKey")
    assert emu.created_count == 0


def test_routes_unknown_and_text2image(emu: Emulator, api: Api) -> None:
    body = assert_error(api.get("/no/such/route"), 404, "NotFound")
    assert "request_id" in body
    assert_error(api.get("/services/aigc/image2image/image-synthesis"), 404, "NotFound")
    text2image = api.http.post(f"{emu.base_url}/services/aigc/text2image/image-synthesis",
                               data=json.dumps(make_body()), headers=api.headers(), timeout=5)
    assert_error(text2image, 400, "InvalidParameter", "url error, please check url!")
    assert [r.route for r in emu.requests] == ["unknown", "unknown", "unknown"]
    assert emu.created_count == 0


@pytest.mark.parametrize(("raw", "code", "message"), [
    (b"{not json", "InvalidParameter", "Required body invalid"),
    (b"[1, 2]", "BadRequest.IllegalInput", "requires json format"),
    (json.dumps({"input": {}}).encode(), "BadRequest.EmptyModel", '"model" missing'),
    (json.dumps({"model": MODEL}).encode(), "BadRequest.EmptyInput", "input parameter missing"),
    (json.dumps({**make_body(), "model": "wanx2.1-imageedit-pro"}).encode(), "InvalidParameter", "Model not exist."),
])
def test_envelope_errors(emu: Emulator, api: Api, raw: bytes, code: str, message: str) -> None:
    assert_error(api.create(raw), 400, code, message)
    assert emu.created_count == 0


# ---- validation ---------------------------------------------------------------------------

def _too_big_bmp() -> str:
    """A 1900x1900 BMP: about 10.8 MB, just over 10 MiB, yet inside the side-length limits."""
    return data_uri(image_bytes(1900, 1900, fmt="BMP"), "image/bmp")


INVALID_CASES: list[tuple[str, Callable[[], dict[str, Any]], str, str]] = [
    ("param of another function", lambda: make_body("expand", "a fairy", strength=0.5), "InvalidParameter",
     "parameters.strength is not supported by function 'expand'"),
    ("unknown param", lambda: make_body(size="1024*1024"), "InvalidParameter", "parameters.size"),
    ("n too big", lambda: make_body(n=5), "InvalidParameter", "parameters.n"),
    ("n zero", lambda: make_body(n=0), "InvalidParameter", "parameters.n"),
    ("n bool", lambda: make_body(n=True), "InvalidParameter", "parameters.n"),
    ("n float", lambda: make_body(n=1.0), "InvalidParameter", "parameters.n"),
    ("seed negative", lambda: make_body(seed=-1), "InvalidParameter", "parameters.seed"),
    ("seed too big", lambda: make_body(seed=2**31), "InvalidParameter", "parameters.seed"),
    ("watermark string", lambda: make_body(watermark="yes"), "InvalidParameter", "parameters.watermark"),
    ("strength > 1", lambda: make_body(strength=1.5), "InvalidParameter", "parameters.strength"),
    ("scale < 1", lambda: make_body("expand", "x", top_scale=0.9), "InvalidParameter", "parameters.top_scale"),
    ("upscale 5", lambda: make_body("super_resolution", "x", upscale_factor=5), "InvalidParameter",
     "parameters.upscale_factor"),
    ("upscale float", lambda: make_body("super_resolution", "x", upscale_factor=2.0), "InvalidParameter",
     "parameters.upscale_factor"),
    ("is_sketch int", lambda: make_body("doodle", "x", is_sketch=1), "InvalidParameter", "parameters.is_sketch"),
    ("unknown function", lambda: make_body("inpaint"), "InvalidParameter", "input.function"),
    ("missing prompt", lambda: {"model": MODEL, "input": {"function": "colorization", "base_image_url": BASE}},
     "InvalidParameter", "input.prompt"),
    ("empty prompt", lambda: make_body(prompt=""), "InvalidParameter", "input.prompt"),
    ("unknown input field", lambda: {**make_body(), "input": {**make_body()["input"], "negative_prompt": "x"}},
     "InvalidParameter", "input.negative_prompt"),
    ("mask missing", lambda: make_body("description_edit_with_mask", "x"), "InvalidParameter", "mask_image_url"),
    ("mask not taken", lambda: make_body(mask=mask_uri()), "InvalidParameter", "mask_image_url"),
    ("mask size mismatch", lambda: make_body("description_edit_with_mask", "x", mask=mask_uri(600, 512)),
     "InvalidParameter", "resolution of mask_image_url"),
    ("small image", lambda: make_body(base=data_uri(image_bytes(256, 512))), "InvalidParameter",
     "between 512 and 4096"),
    ("wide image", lambda: make_body(base=data_uri(image_bytes(4100, 512))), "InvalidParameter",
     "between 512 and 4096"),
    ("png labelled jpeg", lambda: make_body(base=data_uri(BASE_PNG, "image/jpeg")), "InvalidParameter",
     "The media format is not supported or incorrect for the data inspection."),
    ("gif mime", lambda: make_body(base=data_uri(BASE_PNG, "image/gif")), "InvalidParameter",
     "The media format is not supported"),
    ("not an image", lambda: make_body(base=data_uri(b"hello world" * 10)), "InvalidParameter",
     "The media format is not supported"),
    ("bad base64", lambda: make_body(base="data:image/png;base64,@@@@"), "InvalidParameter",
     "The media format is not supported"),
    ("http url", lambda: make_body(base="https://wanx.alicdn.com/material/20250318/expand_2.jpg"),
     "InvalidParameter.DataInspection", "Unable to download the media resource"),
    ("local path", lambda: make_body(base="/tmp/a.png"), "InvalidParameter", "URL does not appear to be valid"),
    ("over 10 MiB", lambda: make_body(base=_too_big_bmp()), "InvalidParameter", "10 MB"),
]


@pytest.mark.parametrize(("build", "code", "message"), [c[1:] for c in INVALID_CASES],
                         ids=[c[0] for c in INVALID_CASES])
def test_validation_rejects(emu: Emulator, api: Api, build: Callable[[], dict[str, Any]], code: str,
                            message: str) -> None:
    assert_error(api.create(build()), 400, code, message)
    assert emu.created_count == 0


@pytest.mark.parametrize("body", [
    make_body("colorization", ""),
    make_body("description_edit_with_mask", "", mask=mask_uri()),
    make_body(strength=1),  # an integer is a number
    make_body("expand", "x", top_scale=2, bottom_scale=1.0, left_scale=1.5, right_scale=1, n=4, seed=2**31 - 1,
              watermark=True),
    make_body(base=data_uri(image_bytes(fmt="JPEG"), "image/jpeg")),
    make_body(base=data_uri(image_bytes(fmt="WEBP"), "image/webp")),
    make_body(base=data_uri(image_bytes(fmt="BMP"), "image/bmp")),
    make_body(base=data_uri(image_bytes(fmt="TIFF"), "image/tiff")),
    make_body(base=data_uri(image_bytes(4096, 512))),
], ids=["colorization empty prompt", "mask empty prompt", "int strength", "expand all params", "jpeg", "webp",
        "bmp", "tiff", "4096 wide"])
def test_validation_accepts(emu: Emulator, api: Api, body: dict[str, Any]) -> None:
    assert api.create(body).status_code == 200
    assert emu.created_count == 1


def test_long_prompt_is_truncated_not_rejected(wide_api: Api) -> None:
    (long,), (cut,) = _results(wide_api, make_body(prompt="A" * 800 + "B" * 200, seed=3),
                               make_body(prompt="A" * 800, seed=3))
    assert long == cut  # the service only ever saw the first 800 characters


def test_async_validation_mode() -> None:
    with Emulator(sync_validation=False, submit_rps=100, **FAST) as emulator:
        api = Api(emulator)
        task_id = api.create_ok(make_body(n=9))
        output = api.wait(task_id)["output"]
        assert output["task_status"] == "FAILED"
        assert output["code"] == "InvalidParameter" and "parameters.n" in output["message"]
        assert output["task_metrics"] == {"TOTAL": 1, "SUCCEEDED": 0, "FAILED": 1}
        bad_image = api.create_ok(make_body(base=data_uri(BASE_PNG, "image/jpeg"), n=2))
        output = api.wait(bad_image)["output"]
        assert output["message"] == "The media format is not supported or incorrect for the data inspection."
        assert output["task_metrics"]["FAILED"] == 2
        # Gateway-level checks stay synchronous.
        assert_error(api.create({**make_body(), "model": "nope"}), 400, "InvalidParameter", "Model not exist.")
        assert emulator.created_count == 2


# ---- rate limits, queueing, cancel ---------------------------------------------------------


def test_third_create_in_one_second_is_throttled() -> None:
    with Emulator(**FAST) as emulator:  # default submit_rps=2
        api = Api(emulator)
        assert api.create(make_body()).status_code == 200
        assert api.create(make_body()).status_code == 200
        assert_error(api.create(make_body()), 429, "Throttling.RateQuota",
                     "Requests rate limit exceeded, please try again later.")
        assert emulator.created_count == 2
        emulator.advance(1.0)  # the sliding window moves with the emulator's clock
        assert api.create(make_body()).status_code == 200
        assert emulator.created_count == 3


def test_task_api_qps_is_per_route() -> None:
    with Emulator(**{**FAST, "task_api_qps": 3}) as emulator:
        api = Api(emulator)
        for _ in range(3):
            assert api.get("/tasks/some-id").status_code == 200
        assert_error(api.get("/tasks/some-id"), 429, "Throttling", "Requests throttling triggered.")
        assert api.get("/tasks").status_code == 200  # list has its own 20-QPS budget
        emulator.advance(1.0)
        assert api.get("/tasks/some-id").status_code == 200


@pytest.fixture
def slow_emu() -> Iterator[Emulator]:
    """Tasks take 10-20 s, moved along with advance(): deterministic queueing tests."""
    with Emulator(submit_rps=100, pending_s=0.05, running_s=(10, 20)) as emulator:
        yield emulator


def test_queue_beyond_two_running(slow_emu: Emulator) -> None:
    api = Api(slow_emu)
    ids = [api.create_ok(make_body()) for _ in range(3)]
    slow_emu.advance(1)
    assert [slow_emu.task_status(t) for t in ids] == ["RUNNING", "RUNNING", "PENDING"]
    slow_emu.advance(50)
    outputs = [api.query(t)["output"] for t in ids]
    assert all(o["task_status"] == "SUCCEEDED" for o in outputs)
    # FIFO: the third starts exactly when the first slot frees.
    assert outputs[2]["scheduled_time"] == min(outputs[0]["end_time"], outputs[1]["end_time"])


def test_cancel_pending_but_not_running(slow_emu: Emulator) -> None:
    api = Api(slow_emu)
    ids = [api.create_ok(make_body()) for _ in range(3)]
    slow_emu.advance(1)
    response = api.cancel(ids[2])
    assert response.status_code == 200 and list(response.json()) == ["request_id"]
    canceled = api.query(ids[2])["output"]
    assert canceled["task_status"] == "CANCELED" and "end_time" in canceled and "results" not in canceled
    message = "Failed to cancel the task, please confirm if the task is in PENDING status."
    assert_error(api.cancel(ids[0]), 400, "UnsupportedOperation", message)  # RUNNING
    assert_error(api.cancel(ids[2]), 400, "UnsupportedOperation", message)  # already CANCELED
    assert_error(api.cancel("no-such-task"), 400, "UnsupportedOperation", message)
    slow_emu.advance(20)
    assert api.query(ids[0])["output"]["task_status"] == "SUCCEEDED"
    assert_error(api.cancel(ids[0]), 400, "UnsupportedOperation", message)  # SUCCEEDED
    assert slow_emu.task_status(ids[2]) == "CANCELED"


def test_list_tasks(emu: Emulator, api: Api) -> None:
    ids = [api.create_ok(make_body()) for _ in range(2)]
    for path in ("/tasks", "/tasks/"):
        body = api.get(path).json()
        assert body["total"] == 2 and body["page_no"] == 1 and body["page_size"] == 10 and body["total_page"] == 1
        assert [item["task_id"] for item in body["data"]] == ids[::-1]  # newest first
        item = body["data"][0]
        assert item["model_name"] == MODEL and item["region"] == "cn-beijing"
        assert item["status"] in ("PENDING", "RUNNING")
        assert item["user_api_unique_key"] == f"apikey:v1:aigc:image2image:image-synthesis:{MODEL}"
        assert isinstance(item["gmt_create"], int) and item["api_key_id"] == "emulator-key-1"
    paged = api.get("/tasks?page_size=1&page_no=2").json()
    assert paged["total_page"] == 2 and [i["task_id"] for i in paged["data"]] == ids[:1]
    assert api.get(f"/tasks?task_id={ids[0]}").json()["total"] == 1
    api.wait(ids[1])
    assert api.get("/tasks?status=SUCCEEDED").json()["total"] >= 1
    assert api.get("/tasks?start_time=20200101000000").json()["total"] == 0
    assert_error(api.get("/tasks?start_time=20200101000000&end_time=20200103000000"), 400, "InvalidParameter")
    assert_error(api.get("/tasks?page_size=0"), 400, "InvalidParameter")


# ---- outcomes and expiry -------------------------------------------------------------------


def test_partial_failure(emu: Emulator, api: Api) -> None:
    emu.next_task_outcomes("partial")
    task_id = api.create_ok(make_body(n=3))
    body = api.wait(task_id)
    output = body["output"]
    assert output["task_status"] == "SUCCEEDED"
    assert output["task_metrics"] == {"TOTAL": 3, "SUCCEEDED": 1, "FAILED": 2}
    assert body["usage"] == {"image_count": 1}
    assert "url" in output["results"][0]
    assert [r["code"] for r in output["results"][1:]] == ["InternalError.Timeout"] * 2
    assert all(r["message"] for r in output["results"][1:])
    assert png_of(api.download(output["results"][0]["url"])).size == (512, 512)
    assert api.download(output["results"][0]["url"].replace("/0.png", "/1.png")).status_code == 404


def test_partial_with_one_image_succeeds(emu: Emulator, api: Api) -> None:
    emu.next_task_outcomes("partial")
    body = api.wait(api.create_ok(make_body(n=1)))
    assert body["output"]["task_metrics"] == {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}


def test_other_outcomes(emu: Emulator, api: Api) -> None:
    emu.next_task_outcomes("fail:DataInspectionFailed", "unknown", "all_images_fail", "running_s:5")
    failed, unknown, all_fail, slow = (api.create_ok(make_body(n=2)) for _ in range(4))

    body = api.wait(failed)
    assert body["output"]["task_status"] == "FAILED" and "usage" not in body
    assert body["output"]["code"] == "DataInspectionFailed"
    assert body["output"]["message"] == "Input data may contain inappropriate content."
    assert body["output"]["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 0, "FAILED": 2}

    assert api.query(unknown)["output"] == {"task_id": unknown, "task_status": "UNKNOWN"}

    body = api.wait(all_fail)
    assert body["output"]["task_status"] == "FAILED" and "usage" not in body
    assert body["output"]["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 0, "FAILED": 2}

    assert api.query(slow)["output"]["task_status"] in ("PENDING", "RUNNING")
    time.sleep(0.1)
    assert api.query(slow)["output"]["task_status"] == "RUNNING"
    emu.advance(5)
    assert api.query(slow)["output"]["task_status"] == "SUCCEEDED"
    assert emu.task_status(unknown) == "SUCCEEDED"  # the task ran; only queries hide it
    assert api.query(unknown)["output"]["task_status"] == "UNKNOWN"


def test_unknown_after_24_hours(emu: Emulator, api: Api) -> None:
    task_id = api.create_ok(make_body())
    url = api.wait(task_id)["output"]["results"][0]["url"]
    emu.advance(24 * 3600 - 60)
    assert api.query(task_id)["output"]["task_status"] == "SUCCEEDED"
    assert api.download(url).status_code == 200
    emu.advance(120)
    assert api.query(task_id)["output"] == {"task_id": task_id, "task_status": "UNKNOWN"}
    assert api.download(url).status_code == 404
    assert api.get("/tasks").json()["total"] == 0
    assert emu.task_status(task_id) == "UNKNOWN"
    assert api.query("never-existed")["output"] == {"task_id": "never-existed", "task_status": "UNKNOWN"}


# ---- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status", "code", "created"), [
    ("throttle", 429, "Throttling.RateQuota", 0),
    ("http500", 500, "InternalError", 0),
    ("http502_plain", 502, None, 0),
    ("drop_before", None, None, 0),
    ("drop_after", None, None, 1),
    ("slow:0.3", 200, None, 1),
    ("arrearage", 400, "Arrearage", 0),
    ("invalid_key", 401, "InvalidApiKey", 0),
    ("moderation", 400, "DataInspectionFailed", 0),
])
def test_create_faults(emu: Emulator, api: Api, fault: str, status: int | None, code: str | None,
                       created: int) -> None:
    emu.inject("create", fault)
    started = time.monotonic()
    if status is None:
        with pytest.raises(requests.ConnectionError):
            api.create(make_body())
        assert emu.requests[-1].status == 0
    else:
        response = api.create(make_body())
        assert response.status_code == status
        if code is not None:
            assert_error(response, status, code)
        if fault == "http502_plain":
            assert not response.headers["Content-Type"].startswith("application/json")
            with pytest.raises(ValueError):
                response.json()
        if fault.startswith("slow"):
            assert time.monotonic() - started >= 0.3
    assert emu.created_count == created
    if fault == "drop_after":  # the task exists and runs although the client never heard of it
        state = requests.get(f"http://127.0.0.1:{emu.port}/_emulator/state", timeout=5).json()
        assert len(state["tasks"]) == 1
    assert api.create(make_body()).status_code == 200  # the fault was consumed
    assert emu.created_count == created + 1


@pytest.mark.parametrize("route", ["query", "list", "cancel"])
@pytest.mark.parametrize("fault", ["http503", "http500", "throttle", "drop_before", "slow:0.2"])
def test_task_api_faults(emu: Emulator, api: Api, route: str, fault: str) -> None:
    # Two long tasks hold both running slots, so the third stays PENDING (cancellable) throughout.
    emu.next_task_outcomes("running_s:30", "running_s:30")
    *_, task_id = (api.create_ok(make_body()) for _ in range(3))

    def call() -> requests.Response:
        if route == "query":
            return api.get(f"/tasks/{task_id}")
        if route == "list":
            return api.get("/tasks")
        return api.cancel(task_id)

    emu.inject(route, fault)
    started = time.monotonic()
    if fault == "drop_before":
        with pytest.raises(requests.ConnectionError):
            call()
    elif fault.startswith("slow"):
        assert call().status_code == 200
        assert time.monotonic() - started >= 0.2
    else:
        status, code = {"http503": (503, "ServiceUnavailable"), "http500": (500, "InternalError"),
                        "throttle": (429, "Throttling")}[fault]
        assert_error(call(), status, code)
    after = call()  # consumed: the next call is normal
    if route == "cancel" and fault.startswith("slow"):
        assert_error(after, 400, "UnsupportedOperation")  # the slow cancel already went through
    else:
        assert after.status_code == 200


@pytest.mark.parametrize("fault", ["http404", "http403", "garbage", "drop_before", "http503", "slow:0.2"])
def test_download_faults(emu: Emulator, api: Api, fault: str) -> None:
    url = api.wait(api.create_ok(make_body()))["output"]["results"][0]["url"]
    emu.inject("download", fault)
    if fault == "drop_before":
        with pytest.raises(requests.ConnectionError):
            api.download(url)
    else:
        response = api.download(url)
        if fault == "garbage":
            assert response.status_code == 200
            with pytest.raises(OSError):  # Pillow's UnidentifiedImageError
                Image.open(io.BytesIO(response.content)).load()
        elif fault == "slow:0.2":
            png_of(response)
        else:
            assert response.status_code == int(fault[4:])
    png_of(api.download(url))


def test_bad_fault_names_are_refused(emu: Emulator) -> None:
    for route, fault in [("create", "http404"), ("query", "drop_after"), ("nope", "http500"), ("create", "slow:x"),
                         ("create", "slow:-1"), ("download", "garbage:1")]:
        with pytest.raises(ValueError):
            emu.inject(route, fault)
    for outcome in ["fail", "explode", "running_s:abc", "partial:2"]:
        with pytest.raises(ValueError):
            emu.next_task_outcomes(outcome)


def test_admin_routes(emu: Emulator, api: Api) -> None:
    admin = f"http://127.0.0.1:{emu.port}/_emulator"
    assert requests.post(f"{admin}/faults", json={"route": "query", "faults": ["http500"]}, timeout=5).ok
    assert requests.post(f"{admin}/faults", json={"outcomes": ["fail:InternalError"]}, timeout=5).ok
    assert requests.post(f"{admin}/faults", json={"route": "query", "faults": ["bogus"]},
                         timeout=5).status_code == 400
    task_id = api.create_ok(make_body())
    assert api.get(f"/tasks/{task_id}").status_code == 500
    output = api.wait(task_id)["output"]
    assert output["task_status"] == "FAILED" and output["code"] == "InternalError"
    state = requests.get(f"{admin}/state", timeout=5).json()
    assert state["created_count"] == 1 and state["request_id"]
    assert state["tasks"] == [{"task_id": task_id, "status": "FAILED", "reported_status": "FAILED"}]
    assert {r["route"] for r in state["requests"]} >= {"admin", "create", "query"}


def test_stop_closes_the_server() -> None:
    emulator = Emulator(**FAST).start()
    url = emulator.base_url
    session = requests.Session()
    assert session.get(f"{url}/tasks/x", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).ok
    emulator.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(f"{url}/tasks/x", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)


# ---- result images ---------------------------------------------------------------------------


@pytest.fixture
def wide_api() -> Iterator[Api]:
    """Many running slots, so the image tests run their tasks side by side."""
    with Emulator(submit_rps=100, max_running=16, **FAST) as emulator:
        yield Api(emulator)


def _results(api: Api, *bodies: dict[str, Any]) -> list[list[bytes]]:
    """Create all tasks first, then wait for each and download every image."""
    ids = [api.create_ok(body) for body in bodies]
    outputs = [api.wait(task_id)["output"] for task_id in ids]
    return [[api.download(r["url"]).content for r in output["results"]] for output in outputs]


def test_results_are_deterministic(wide_api: Api) -> None:
    (first,), (again,), (other_seed,), (other_prompt,), pair, (no_seed_a,), (no_seed_b,) = _results(
        wide_api, make_body(seed=11), make_body(seed=11), make_body(seed=12),
        make_body(prompt="something else", seed=11), make_body(n=2, seed=11), make_body(), make_body())
    assert again == first
    assert other_seed != first and other_prompt != first
    assert pair[0] != pair[1]  # each index is its own image
    assert no_seed_a == no_seed_b  # without a seed, one is derived from the request body
    with Emulator(submit_rps=100, **FAST) as other:  # a fresh emulator agrees too
        assert _results(Api(other), make_body(seed=11)) == [[first]]


def test_results_are_marked_and_derived(wide_api: Api) -> None:
    ((png,),) = _results(wide_api, make_body("colorization", "", seed=1))
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.getpixel((2, 2)) == (0, 0, 0)  # the black "EMULATED" stamp box, top left
    assert image.getpixel((500, 500)) != (120, 80, 40)  # tinted, not the input colour


def test_expand_and_super_resolution_sizes(wide_api: Api) -> None:
    (expanded_png,), (upscaled_png,), (same_png,) = _results(
        wide_api,
        make_body("expand", "a green fairy", top_scale=1.5, bottom_scale=1.5, left_scale=1.25, right_scale=1.75),
        make_body("super_resolution", "sharpen", upscale_factor=2),
        make_body("super_resolution", "sharpen"))
    expanded: Image.Image = Image.open(io.BytesIO(expanded_png))
    assert expanded.size == (768, 768)  # W*(1.25+1.75)/2, H*(1.5+1.5)/2
    original = Image.open(io.BytesIO(BASE_PNG)).convert("RGB")
    expanded = expanded.convert("RGB")
    left_px, top_px = 64, 128  # W*(1.25-1)/2, H*(1.5-1)/2
    for x, y in [(300, 300), (500, 500), (100, 400)]:
        assert expanded.getpixel((left_px + x, top_px + y)) == original.getpixel((x, y))
    assert expanded.getpixel((5, 700)) == expanded.getpixel((760, 5))  # flat border colour

    assert Image.open(io.BytesIO(upscaled_png)).size == (1024, 1024)
    assert Image.open(io.BytesIO(same_png)).size == (512, 512)


def test_masked_edit_changes_only_the_white_area(wide_api: Api) -> None:
    ((png,),) = _results(wide_api, make_body("description_edit_with_mask", "a vase", mask=mask_uri(), seed=5))
    result = Image.open(io.BytesIO(png)).convert("RGB")
    original = Image.open(io.BytesIO(BASE_PNG)).convert("RGB")
    assert result.crop((0, 0, 256, 512)).tobytes() == original.crop((0, 0, 256, 512)).tobytes()
    assert result.crop((256, 0, 512, 512)).tobytes() != original.crop((256, 0, 512, 512)).tobytes()


# ---- the official SDK against the emulator ---------------------------------------------------

SDK_CASES: list[tuple[str, str, dict[str, Any], tuple[int, int]]] = [
    ("stylization_all", "转换成法国绘本风格", {"strength": 0.5}, (512, 512)),
    ("stylization_local", "把房子变成木板风格", {}, (512, 512)),
    ("description_edit", "把她的头发修改为红色。", {"strength": 0.5}, (512, 512)),
    ("description_edit_with_mask", "陶瓷兔子拿着陶瓷小花。", {}, (512, 512)),
    ("remove_watermark", "去除图像中的文字", {}, (512, 512)),
    ("expand", "一位绿色仙子", {"top_scale": 1.5, "bottom_scale": 1.5, "left_scale": 1.5, "right_scale": 1.5},
     (768, 768)),
    ("super_resolution", "图像超分。", {"upscale_factor": 2}, (1024, 1024)),
    ("colorization", "蓝色背景，黄色的叶子。", {}, (512, 512)),
    ("doodle", "北欧极简风格的客厅。", {"is_sketch": False}, (512, 512)),
    ("control_cartoon_feature", "卡通形象小心翼翼地探出头，窥视着房间内一颗璀璨的蓝色宝石。", {}, (512, 512)),
]


@pytest.fixture(scope="module")
def sdk_emulator() -> Iterator[Emulator]:
    # The SDK's wait() polls at 0, 1, 2, 4 s...: short tasks finish by the second poll.
    with Emulator(running_s=(0.05, 0.1), pending_s=0.02) as emulator:
        yield emulator


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Callable[[Emulator], Any]:
    dashscope = pytest.importorskip("dashscope")

    def point_at(emulator: Emulator) -> Any:
        monkeypatch.setattr(dashscope, "base_http_api_url", emulator.base_url)  # restored after the test
        monkeypatch.setattr(dashscope, "api_key", KEY)
        return dashscope

    return point_at


@pytest.mark.parametrize(("function", "prompt", "params", "size"), SDK_CASES, ids=[c[0] for c in SDK_CASES])
def test_sdk_call_every_function(sdk_emulator: Emulator, sdk: Callable[[Emulator], Any], function: str,
                                 prompt: str, params: dict[str, Any], size: tuple[int, int]) -> None:
    dashscope = sdk(sdk_emulator)
    extra = {"mask_image_url": mask_uri()} if function == "description_edit_with_mask" else {}
    response = dashscope.ImageSynthesis.call(model=MODEL, function=function, prompt=prompt, base_image_url=BASE,
                                             n=1, **extra, **params)
    assert response.status_code == 200, response
    assert response.output.task_status == "SUCCEEDED"
    assert response.usage.image_count == 1
    image = png_of(requests.get(response.output.results[0].url, timeout=10))
    assert image.size == size
    sent = next(r for r in reversed(sdk_emulator.requests) if r.route == "create")
    assert sent.headers["User-Agent"].startswith("dashscope/")
    assert sent.body["input"]["function"] == function and sent.body["parameters"] == {"n": 1, **params}


def test_sdk_async_call_cancel_and_list(sdk: Callable[[Emulator], Any]) -> None:
    with Emulator(running_s=(0.05, 0.1), pending_s=0.02, submit_rps=5) as emulator:
        dashscope = sdk(emulator)
        synth = dashscope.ImageSynthesis
        emulator.next_task_outcomes("running_s:30", "running_s:30")  # occupy both running slots
        blockers = [synth.async_call(model=MODEL, function="colorization", prompt="蓝色背景", base_image_url=BASE)
                    for _ in range(2)]
        time.sleep(0.1)
        queued = synth.async_call(model=MODEL, function="colorization", prompt="蓝色背景", base_image_url=BASE)
        assert queued.status_code == 200 and queued.output.task_status == "PENDING"
        assert emulator.task_status(queued.output.task_id) == "PENDING"

        canceled = synth.cancel(queued)
        assert canceled.status_code == 200
        assert synth.fetch(queued).output.task_status == "CANCELED"
        refused = synth.cancel(blockers[0])
        assert refused.status_code == 400 and refused.code == "UnsupportedOperation"

        listed = synth.list(page_size=10, model_name=MODEL)
        assert listed.status_code == 200
        assert listed.output["total"] == 3
        statuses = {item["task_id"]: item["status"] for item in listed.output["data"]}
        assert statuses[queued.output.task_id] == "CANCELED"
        assert statuses[blockers[0].output.task_id] == "RUNNING"
        assert emulator.created_count == 3


# ---- faults around money (issue 10) -----------------------------------------------------------


def oss_code(response: requests.Response) -> str:
    """The <Code> of an error answered the way object storage (OSS) answers: XML, not JSON."""
    assert response.headers["Content-Type"] == "application/xml", response.headers
    match = re.search(r"<Code>([^<]+)</Code>", response.text)
    assert match, response.text
    return match.group(1)


def result_urls(api: Api, *, n: int = 1, **params: Any) -> tuple[str, list[str]]:
    """A finished task's id and its signed result URLs."""
    task_id = api.create_ok(make_body(n=n, **params))
    output = api.wait(task_id)["output"]
    assert output["task_status"] == "SUCCEEDED", output
    return task_id, [r["url"] for r in output["results"]]


@pytest.mark.parametrize(("fault", "status", "code"), [("http403", 403, "AccessDenied"), ("http404", 404, "NoSuchKey")])
def test_download_refused_once_then_ok(emu: Emulator, api: Api, fault: str, status: int, code: str) -> None:
    task_id, (url,) = result_urls(api)
    emu.inject("download", fault)
    refused = api.download(url)
    assert refused.status_code == status and oss_code(refused) == code
    assert emu.downloaded_count == 0
    png_of(api.download(url))
    assert emu.downloaded_count == 1 and emu.download_counts == {(task_id, 0): 1}


@pytest.mark.parametrize(("fault", "status"), [("http403+always", 403), ("http404+always", 404)])
def test_persistent_download_refusal_lasts_until_cleared(emu: Emulator, api: Api, fault: str, status: int) -> None:
    _, (url,) = result_urls(api)
    emu.inject("download", fault)
    assert [api.download(url).status_code for _ in range(4)] == [status] * 4
    emu.clear_faults("download")
    png_of(api.download(url))
    assert emu.downloaded_count == 1


def test_a_download_fault_can_hold_one_result_index(emu: Emulator, api: Api) -> None:
    task_id, urls = result_urls(api, n=2)
    emu.inject("download", "http404+always+index:1")
    for _ in range(3):
        png_of(api.download(urls[0]))  # passes the fault by without using it up
        assert api.download(urls[1]).status_code == 404
    assert emu.download_counts == {(task_id, 0): 3}


def test_times_modifier_repeats_a_fault(emu: Emulator, api: Api) -> None:
    emu.inject("query", "http503+times:2", "http500")
    assert [api.get("/tasks/x").status_code for _ in range(4)] == [503, 503, 500, 200]


def test_truncated_short_and_corrupt_downloads(emu: Emulator, api: Api) -> None:
    task_id, (url,) = result_urls(api)
    full = api.download(url).content
    emu.inject("download", "truncate")
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        api.download(url)  # Content-Length promised more than came before the connection closed
    emu.inject("download", "short")
    short = api.download(url)
    assert short.status_code == 200 and short.headers["Content-Type"] == "image/png"
    assert int(short.headers["Content-Length"]) == len(short.content) == len(full) // 2  # valid headers
    assert short.content == full[: len(full) // 2]
    with pytest.raises(OSError):
        Image.open(io.BytesIO(short.content)).load()
    emu.inject("download", "garbage")
    corrupt = api.download(url)
    assert corrupt.status_code == 200 and corrupt.content[:8] != full[:8]
    assert api.download(url).content == full
    assert emu.download_counts == {(task_id, 0): 2}  # only the two whole, real images


def test_short_and_truncate_let_an_error_answer_through(emu: Emulator, api: Api) -> None:
    for fault in ("short", "truncate"):
        emu.inject("download", fault)
        missing = api.download(f"http://127.0.0.1:{emu.port}/results/no-such-task/0.png")
        assert missing.status_code == 404 and oss_code(missing) == "NoSuchKey"


def test_unknown_once_for_a_live_task(emu: Emulator, api: Api) -> None:
    emu.next_task_outcomes("unknown_once")
    task_id = api.create_ok(make_body())
    assert api.query(task_id)["output"] == {"task_id": task_id, "task_status": "UNKNOWN"}
    assert api.query(task_id)["output"]["task_status"] in ("PENDING", "RUNNING")  # the real state again
    assert api.get("/tasks").json()["data"][0]["status"] in ("PENDING", "RUNNING")  # the list never hid it
    assert api.wait(task_id)["output"]["task_status"] == "SUCCEEDED"
    emu.inject("query", "unknown")  # the route fault: the next query of any task
    assert api.query(task_id)["output"] == {"task_id": task_id, "task_status": "UNKNOWN"}
    assert api.query(task_id)["output"]["task_status"] == "SUCCEEDED"
    assert emu.billed_image_count == 1


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "ServiceUnavailable"),
                                              (504, "RequestTimeOut")])
def test_accepted_then_a_server_error_with_a_json_body(emu: Emulator, api: Api, status: int, code: str) -> None:
    emu.inject("create", f"http{status}")
    twin = assert_error(api.create(make_body()), status, code)
    assert emu.created_count == 0  # the twin: the very same answer, nothing created
    emu.inject("create", f"accept_then_{status}")
    before_ms = int(emu.now_s() * 1000)
    answer = assert_error(api.create(make_body()), status, code)
    assert answer.keys() == twin.keys() and answer["message"] == twin["message"]
    assert emu.created_count == 1
    (row,) = api.get("/tasks").json()["data"]
    assert row["request_id"] == answer["request_id"]  # the error's request_id is the task's submit request
    assert before_ms <= row["gmt_create"] <= int(emu.now_s() * 1000)
    assert api.wait(row["task_id"])["output"]["task_status"] == "SUCCEEDED"  # it runs, and it bills
    assert emu.billed_image_count == 1


def test_every_listed_task_names_its_submit_request_and_creation_time(emu: Emulator, api: Api) -> None:
    answered = api.create(make_body()).json()
    emu.inject("create", "drop_after")
    with pytest.raises(requests.ConnectionError):
        api.create(make_body())
    rows = api.get("/tasks").json()["data"]  # newest first
    assert emu.created_count == 2 and len(rows) == 2
    assert (rows[1]["task_id"], rows[1]["request_id"]) == (answered["output"]["task_id"], answered["request_id"])
    for row in rows:
        assert re.fullmatch(r"[0-9a-f-]{36}", row["request_id"]), row
        assert row["gmt_create"] == int(emu.task_times(row["task_id"]).submit_s * 1000)  # epoch milliseconds
    assert rows[0]["request_id"] != answered["request_id"] and rows[0]["task_id"] in emu.task_ids


def test_partial_failure_at_chosen_indices_with_a_chosen_code(emu: Emulator, api: Api) -> None:
    emu.next_task_outcomes("partial:1,3:DataInspectionFailed", "partial:0:InternalError.Algo",
                           "partial:3:DataInspectionFailed")
    four, one, two = api.create_ok(make_body(n=4)), api.create_ok(make_body(n=1)), api.create_ok(make_body(n=2))
    body = api.wait(four)
    output = body["output"]
    assert output["task_status"] == "SUCCEEDED"
    assert ["url" in r for r in output["results"]] == [True, False, True, False]
    moderated = {"code": "DataInspectionFailed", "message": "Output data may contain inappropriate content."}
    assert output["results"][1] == output["results"][3] == moderated
    assert output["task_metrics"] == {"TOTAL": 4, "SUCCEEDED": 2, "FAILED": 2} and body["usage"] == {"image_count": 2}
    for index in (0, 2):
        png_of(api.download(output["results"][index]["url"]))
    body = api.wait(one)  # its only image failed: zero images is never SUCCEEDED
    assert body["output"]["task_status"] == "FAILED" and body["output"]["code"] == "InternalError.Algo"
    assert "usage" not in body
    body = api.wait(two)  # index 3 does not exist for n=2
    assert body["output"]["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
    assert emu.billed_image_count == 4


def test_new_fault_and_outcome_forms_are_checked(emu: Emulator) -> None:
    for route, fault in [("download", "http403+index:x"), ("query", "http503+index:1"), ("query", "http503+times:0"),
                         ("create", "accept_then_404"), ("create", "http503+forever"), ("download", "truncate:1"),
                         ("query", "unknown:1"), ("list", "unknown")]:
        with pytest.raises(ValueError):
            emu.inject(route, fault)
    for outcome in ["partial:1", "partial:1,x:DataInspectionFailed", "partial:4:InternalError", "partial:1:",
                    "partial+partial:1:InternalError", "unknown_once:2"]:
        with pytest.raises(ValueError):
            emu.next_task_outcomes(outcome)
    with pytest.raises(ValueError):
        emu.clear_faults("nope")
    with pytest.raises(ValueError):
        emu.inject("nope")


def test_result_links_expire_and_a_new_query_signs_them_again() -> None:
    with Emulator(submit_rps=100, link_lifetime_s=30, **FAST) as emulator:
        api = Api(emulator)
        task_id, (url,) = result_urls(api)
        expires = int(parse_qs(urlsplit(url).query)["Expires"][0])
        assert 30 <= expires - emulator.now_s() <= 31
        png_of(api.download(url))
        emulator.advance(31)
        expired = api.download(url)
        assert expired.status_code == 403 and oss_code(expired) == "AccessDenied" and "expired" in expired.text
        fresh = api.query(task_id)["output"]["results"][0]["url"]
        assert fresh != url and fresh.partition("?")[0] == url.partition("?")[0]
        png_of(api.download(fresh))
        assert emulator.download_counts == {(task_id, 0): 2}


def test_result_links_must_carry_their_own_signature(emu: Emulator, api: Api) -> None:
    _, urls = result_urls(api, n=2)
    expires = int(parse_qs(urlsplit(urls[0]).query)["Expires"][0])
    assert 24 * 3600 <= expires - emu.now_s() <= 24 * 3600 + 1  # the service's 24 h by default
    path, _, query = urls[0].partition("?")
    assert oss_code(api.download(path)) == "AccessDenied"  # unsigned
    borrowed = api.download(f"{urls[1].partition('?')[0]}?{query}")  # index 1 with index 0's signature
    assert borrowed.status_code == 403 and oss_code(borrowed) == "SignatureDoesNotMatch"
    extended = re.sub(r"Expires=(\d+)", lambda m: f"Expires={int(m[1]) + 3600}", urls[0])
    assert oss_code(api.download(extended)) == "SignatureDoesNotMatch"
    assert emu.downloaded_count == 0


def test_money_counters(emu: Emulator, api: Api) -> None:
    emu.next_task_outcomes("ok", "partial", "fail:InternalError")
    ok, partial, failed = (api.create_ok(make_body(n=n)) for n in (2, 3, 2))
    outputs = {task_id: api.wait(task_id)["output"] for task_id in (ok, partial, failed)}
    assert outputs[failed]["task_status"] == "FAILED"
    assert emu.created_count == 3 and emu.billed_image_count == 2 + 1
    for url in [r["url"] for r in outputs[ok]["results"]] + [outputs[ok]["results"][0]["url"],
                                                             outputs[partial]["results"][0]["url"]]:
        png_of(api.download(url))
    assert emu.downloaded_count == 4
    assert emu.download_counts == {(ok, 0): 2, (ok, 1): 1, (partial, 0): 1}
    state = requests.get(f"http://127.0.0.1:{emu.port}/_emulator/state", timeout=5).json()
    assert (state["created_count"], state["billed_image_count"], state["downloaded_count"]) == (3, 3, 4)
    emu.advance(25 * 3600)
    assert emu.task_ids == [] and emu.billed_image_count == 3  # forgotten tasks stay billed


# ---- seams for the benchmark -----------------------------------------------------------------


def test_render_seam_and_request_observer() -> None:
    rendered: list[tuple[str, int]] = []
    observed: list[LoggedRequest] = []

    def red(job: Job, *, index: int) -> bytes:
        rendered.append((job.function, index))
        buffer = io.BytesIO()
        Image.new("RGB", (job.base.width_px, job.base.height_px), (255, 0, 0)).save(buffer, format="PNG")
        return buffer.getvalue()

    with Emulator(submit_rps=100, render=red, on_request=observed.append, **FAST) as emulator:
        api = Api(emulator)
        task_id = api.create_ok(make_body(n=2))
        assert len(observed) == 1  # observed before the answer was written
        urls = [r["url"] for r in api.wait(task_id)["output"]["results"]]
        for url in urls * 2:
            assert png_of(api.download(url)).convert("RGB").getpixel((5, 5)) == (255, 0, 0)
            assert len(observed) == len(emulator.requests)
        assert sorted(rendered) == [("description_edit", 0), ("description_edit", 1)]  # once each, then stored
        assert observed == emulator.requests
        assert observed[0].route == "create" and observed[0].status == 200 and observed[-1].route == "download"
        assert all(r.handling_s >= 0 for r in observed)


def test_task_times_and_the_clock(slow_emu: Emulator) -> None:
    api = Api(slow_emu)
    before_s = slow_emu.now_s()
    task_id = api.create_ok(make_body())
    times = slow_emu.task_times(task_id)
    assert before_s <= times.submit_s <= slow_emu.now_s() and times.start_s is None and times.end_s is None
    slow_emu.advance(60)
    times = slow_emu.task_times(task_id)
    assert times.start_s is not None and times.end_s is not None
    assert times.submit_s < times.start_s < times.end_s <= slow_emu.now_s()
    assert 10 <= times.end_s - times.start_s <= 20  # running_s=(10, 20)
    assert api.query(task_id)["output"]["end_time"] == beijing_time(times.end_s)
    assert api.get("/tasks").json()["data"][0]["end_time"] == int(times.end_s * 1000)
    with pytest.raises(KeyError):
        slow_emu.task_times("no-such-task")


def test_validate_job_and_render_result_are_what_the_emulator_serves(emu: Emulator, api: Api) -> None:
    body = make_body("expand", "x", top_scale=1.5, seed=4)
    job = validate_job(body)
    assert (job.function, job.n, job.params["top_scale"], job.params["seed"]) == ("expand", 1, 1.5, 4)
    png = render_result(job, index=0)
    assert Image.open(io.BytesIO(png)).size == (512, 640)  # H * (1.5 + 1.0) / 2
    task_id = api.create_ok(body)
    assert api.download(api.wait(task_id)["output"]["results"][0]["url"]).content == png
    with pytest.raises(ApiError, match="parameters.n"):
        validate_job(make_body(n=9))


# ---- the command line ------------------------------------------------------------------------

BOOT = (f"import sys; sys.path.insert(0, {str(REPO_ROOT / 'tests')!r}); import pack_import; "
        "pack_import.register_pack(); ")


def test_options_are_checked_and_shared_with_the_cli() -> None:
    from wanx_imageedit.nodes.cli import build_parser

    argv = ["--port", "0", "--fault", "create=accept_then_504", "--fault", "download=http403+always",
            "--outcome", "unknown_once", "--link-lifetime-s", "60"]
    args = build_parser().parse_args(["emulator", *argv])
    assert args.faults == [("create", "accept_then_504"), ("download", "http403+always")]
    assert (args.outcomes, args.link_lifetime_s, args.port) == (["unknown_once"], 60, 0)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert vars(parser.parse_args(argv)) == {k: v for k, v in vars(args).items() if k != "command"}
    for bad in (["--fault", "create=bogus"], ["--fault", "accept_then_504"], ["--outcome", "partial:9:X"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert "accept_then_504" in parser.format_help() and "unknown_once" in parser.format_help()


def test_python_m_serves_the_faults_it_is_given(tmp_path: Path) -> None:
    code = BOOT + "import runpy; runpy.run_module('wanx_imageedit.nodes.emulator', run_name='__main__')"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_"))}
    env.update(WANX_STATE_DIR=str(tmp_path / "state"), HOME=str(tmp_path))
    options = ["--port", "0", "--running-s", "0.1", "0.2", "--task-api-qps", "100",
               "--fault", "create=accept_then_504", "--fault", "download=truncate", "--outcome", "unknown_once"]
    process = subprocess.Popen([sys.executable, "-c", code, *options], env=env, cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    banner: list[str] = []
    try:
        assert process.stdout is not None
        while not banner or "press Ctrl-C" not in banner[-1]:  # the banner ends with this line
            line = process.stdout.readline()
            assert line, "the emulator exited: " + "".join(banner)
            banner.append(line)
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+/api/v1)", banner[0])
        assert match, banner
        base_url, http = match.group(1), requests.Session()
        auth = {"Authorization": f"Bearer {KEY}"}
        created = http.post(f"{base_url}/services/aigc/image2image/image-synthesis", json=make_body(),
                            headers={**auth, "X-DashScope-Async": "enable"}, timeout=10)
        answer = assert_error(created, 504, "RequestTimeOut")
        (row,) = http.get(f"{base_url}/tasks", headers=auth, timeout=10).json()["data"]
        assert row["request_id"] == answer["request_id"]
        statuses: list[str] = []
        while not statuses or statuses[-1] not in ("SUCCEEDED", "FAILED"):
            output = http.get(f"{base_url}/tasks/{row['task_id']}", headers=auth, timeout=10).json()["output"]
            statuses.append(output["task_status"])
            time.sleep(0.05)
        assert statuses[0] == "UNKNOWN" and statuses[-1] == "SUCCEEDED"
        url = output["results"][0]["url"]
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(url, timeout=10)
        assert requests.get(url, timeout=10).headers["Content-Type"] == "image/png"
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "  fault queued for create: accept_then_504\n" in banner and "  outcome queued: unknown_once\n" in banner
    assert "stopping" in out
