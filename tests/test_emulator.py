"""Loopback HTTP tests of the DashScope wanx2.1-imageedit emulator (no mocks), plus an SDK
fidelity test: the official `dashscope` 2.0.2 SDK must work against it unchanged."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from PIL import Image, ImageDraw

from wanx_imageedit.nodes.core.emulator import MODEL, Emulator

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
    assert urls == [f"http://127.0.0.1:{emu.port}/results/{task_id}/{i}.png" for i in range(2)]
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


@pytest.mark.parametrize("fault", ["http404", "garbage", "drop_before", "http503", "slow:0.2"])
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
            with pytest.raises(Exception):
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
    expanded = Image.open(io.BytesIO(expanded_png))
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
