"""The command line as a user runs it: a separate process with HOME and the state folder in tmp,
against the emulator over loopback. Errors are one line with a CLI remedy, nothing done to an
input or a payment goes unsaid, and the help says what every option does."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from cli_helpers import clean_env, run, start, write_photo
from conftest import TEST_KEY
from wanx_imageedit.nodes import cli
from wanx_imageedit.nodes.core.errors import InputError
from wanx_imageedit.nodes.core.functions import FUNCTIONS, lookup
from wanx_imageedit.nodes.core.journal import Journal
from wanx_imageedit.nodes.core.request import prepare
from wanx_imageedit.nodes.core.settings import EMULATOR_KEY
from wanx_imageedit.nodes.emulator import DEFAULT_API_KEY


@pytest.fixture
def png(tmp_path: Path) -> Path:
    return write_photo(tmp_path / "in.png")


@pytest.fixture
def env(emulator, tmp_path: Path) -> dict[str, str]:
    """A user whose key and endpoint point at the emulator (started as `wanx-imageedit emulator`)."""
    return clean_env(tmp_path, DASHSCOPE_API_KEY=TEST_KEY, DASHSCOPE_HTTP_BASE_URL=emulator.base_url)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """A user error: exit status 2, one line on stderr, no traceback."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


# --- help ---------------------------------------------------------------------------------------

def test_help_says_what_every_option_does(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    edit = run(["edit", "--help"], env)
    assert edit.returncode == 0
    text = " ".join(edit.stdout.split())
    for fn in FUNCTIONS:
        if fn.styles is not None:  # every style of every stylization function is listed, under its function
            assert f"{fn.api_name}: {', '.join(s.key for s in fn.styles.styles)}" in text
    assert "Not given: no seed is sent, the service picks one, and the result cache is not used" in text
    assert "default 0" not in text.split("--seed", 1)[1].split("--watermark", 1)[0]
    fetch = " ".join(run(["fetch", "--help"], env).stdout.split())
    assert re.search(r"--out OUT folder to write the images to", fetch)
    emulator = " ".join(run(["emulator", "--help"], env).stdout.split())
    for documented in ("--port PORT port (default 8089", "--pending-s PENDING_S seconds a task waits before it runs "
                       "(default 0.05)", "--running-s LOW HIGH range of task running times in seconds (default 5 15)",
                       "--seed SEED seed of the drawn running times (default 0)", f"DASHSCOPE_API_KEY={EMULATOR_KEY}",
                       # every fault and outcome with what it does, worded for the command line
                       "drop_after the task IS created (it runs and bills), then the connection closes unanswered",
                       "accept_then_500 / accept_then_503 / accept_then_504", "slow:S the answer comes S seconds late",
                       "unknown_once the task's first query answers UNKNOWN", "--fault ROUTE=FAULT (repeatable)",
                       "--outcome OUTCOME (repeatable)"):
        assert documented in emulator
    assert "inject(" not in emulator and "next_task_outcomes(" not in emulator  # no Python API wording
    version = run(["--version"], env)
    project = re.search(r'^version = "(.+)"', (Path(cli.__file__).parents[1] / "pyproject.toml").read_text(), re.M)
    assert version.returncode == 0 and version.stdout.strip() == f"wanx-imageedit {project.group(1)}"


def test_every_option_of_every_command_has_help() -> None:
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert EMULATOR_KEY == DEFAULT_API_KEY  # the no-key advice names the emulator's real key


# --- errors -------------------------------------------------------------------------------------

def test_user_errors_are_one_line_and_exit_2(env, emulator, png, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("meeting notes, not a picture\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["edit", "colorization", "--image", str(tmp_path / "notes.png")], "notes.png is not an image file"),
        (["edit", "colorization", "--image", str(tmp_path / "missing.png")], "no such file"),
        (["edit", "description_edit_with_mask", "--image", str(png), "--mask", str(tmp_path / "mask.png"),
          "--prompt", "a vase"], "no such file: " + str(tmp_path / "mask.png")),
        (["edit", "description_edit_with_mask", "--image", str(png), "--mask", str(tmp_path / "notes.png"),
          "--prompt", "a vase"], "notes.png is not an image file"),
        (["edit", "colorization", "--image", str(tmp_path / "empty")], "no images in"),
        (["edit", "colorization", "--image", str(png), "--out", str(tmp_path / "a_file")],
         "cannot create the output folder"),
        (["edit", "paint_everything", "--image", str(png)], "unknown edit function"),
        (["edit", "expand", "--image", str(png), "--prompt", "p", "--strength", "0.3"], "does not take strength"),
    ]
    for args, expected in cases:
        assert expected in one_error_line(run([*args, "--out", str(tmp_path / "o")] if "--out" not in args else args,
                                              env)), args
    assert emulator.requests == []  # every one refused before anything was sent


def test_an_unexpected_exception_is_one_line_naming_the_log_with_the_traceback(env, png, tmp_path: Path) -> None:
    # A failure nobody planned for, from a library the CLI calls (the pack's own code is not touched).
    bug = ("import PIL.Image\ndef broken(*a, **k): raise RuntimeError('simulated library failure')\n"
           "PIL.Image.open = broken\n")
    done = run(["edit", "colorization", "--image", str(png), "--out", str(tmp_path / "o")], env, before=bug)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: unexpected RuntimeError: simulated library failure")
    (log,) = (tmp_path / "state" / "logs").glob("crash-*.log")
    assert str(log) in line
    written = log.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in written and "in broken" in written and TEST_KEY not in written


def test_each_adapter_words_the_remedy_for_its_own_user(env, png, tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    Image.new("L", (512, 512), 0).save(gray)  # all black: nothing to edit
    small = tmp_path / "small_mask.png"
    Image.new("L", (64, 64), 255).save(small)
    inpaint = ["edit", "description_edit_with_mask", "--image", str(png), "--prompt", "a vase", "--out",
               str(tmp_path / "o")]
    no_mask = one_error_line(run(inpaint, env))
    assert "--mask FILE" in no_mask and "Connect" not in no_mask
    empty = one_error_line(run([*inpaint, "--mask", str(gray)], env))
    assert "white in the --mask file" in empty and "Load Image" not in empty
    wrong_size = one_error_line(run([*inpaint, "--mask", str(small)], env))
    assert "exactly 512x512 px" in wrong_size and "Load Image" not in wrong_size
    no_key_env = clean_env(tmp_path)
    no_key = one_error_line(run(["edit", "colorization", "--image", str(png), "--out", str(tmp_path / "o")],
                                no_key_env))
    assert "no DashScope API key" in no_key and "ComfyUI" not in no_key
    for remedy in ("export DASHSCOPE_API_KEY=sk-", "--emulator", f"DASHSCOPE_API_KEY={EMULATOR_KEY}",
                   "wanx-imageedit emulator"):
        assert remedy in no_key
    # The node keeps its own wording of the same errors (ComfyUI shows str(exc)).
    with pytest.raises(InputError, match="Connect a MASK"):
        prepare(lookup("description_edit_with_mask"), image=torch.zeros((1, 512, 512, 3)), mask=None, prompt="a vase")


def test_a_malformed_key_is_told_apart_from_a_key_of_another_region(emulator, png, tmp_path: Path) -> None:
    args = ["edit", "colorization", "--image", str(png), "--out", str(tmp_path / "o")]
    endpoint = {"DASHSCOPE_HTTP_BASE_URL": emulator.base_url}
    malformed = one_error_line(run(args, clean_env(tmp_path, DASHSCOPE_API_KEY="a1b2c3d4e5f6", **endpoint)))
    assert "InvalidApiKey" in malformed and "does not start with sk-" in malformed
    assert "Singapore" not in malformed and "a1b2c3d4e5f6" not in malformed
    wrong_region = one_error_line(run(args, clean_env(tmp_path, DASHSCOPE_API_KEY="sk-" + "0" * 32, **endpoint)))
    assert "InvalidApiKey" in wrong_region and "Beijing" in wrong_region and "does not start" not in wrong_region
    creates = len([r for r in emulator.requests if r.route == "create"])
    spaced = one_error_line(run(args, clean_env(tmp_path, DASHSCOPE_API_KEY="sk-abc def", **endpoint)))
    assert "contains a space" in spaced and "sk-abc def" not in spaced
    assert len([r for r in emulator.requests if r.route == "create"]) == creates  # refused before sending


# --- what the terminal says ---------------------------------------------------------------------

def test_success_lists_the_files_and_says_the_run_was_emulated(env, png, tmp_path: Path) -> None:
    out = tmp_path / "o"
    done = run(["edit", "super_resolution", "--image", str(png), "--upscale-factor", "2", "--out", str(out)], env)
    assert done.returncode == 0, done.stderr
    (result,) = out.glob("*.png")
    assert Image.open(result).size == (1024, 1024)
    assert f"{result.name}  1024x1024  from in.png" in done.stdout
    assert "emulated run: nothing billed (the emulator counted 1 image; the real service would bill CNY 0.14)" \
        in done.stdout
    report = json.loads(next(out.glob("*_report.json")).read_text(encoding="utf-8"))
    assert report["emulated"] is True and report["cost"]["billed"] == 0 and report["usage"]["image_count"] == 1
    assert report["items"][0]["input"] == str(png)
    listed = run(["tasks"], env)
    assert report["items"][0]["task_id"] in listed.stdout


class _NoMarker:
    """The emulator seen through a gateway that drops its marker header: what a run against the
    real service looks like to the client (the result links still point at the emulator)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = requests.request(self.command, outer.upstream + self.path.removeprefix("/api/v1"),
                                          data=body, headers=headers, timeout=30)
                self.send_response(answer.status_code)
                for name in ("Content-Type",):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _relay  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/api/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def gateway(emulator) -> Iterator[_NoMarker]:
    relay = _NoMarker(emulator.base_url)
    yield relay
    relay.close()


def test_a_billed_run_says_what_it_cost(gateway, png, tmp_path: Path) -> None:
    env = clean_env(tmp_path, DASHSCOPE_API_KEY=TEST_KEY, DASHSCOPE_HTTP_BASE_URL=gateway.base_url)
    out = tmp_path / "o"
    done = run(["edit", "colorization", "--image", str(png), "--n", "2", "--out", str(out)], env)
    assert done.returncode == 0, done.stderr
    assert "billed: 2 images, CNY 0.28" in done.stdout and "emulated" not in done.stdout + done.stderr
    report = json.loads(next(out.glob("*_report.json")).read_text(encoding="utf-8"))
    assert report["emulated"] is False and report["cost"]["billed"] == 0.28


def test_what_was_done_to_each_input_is_said_and_a_mixed_folder_runs_at_once(env, emulator, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    write_photo(folder / "small.png", width_px=300, height_px=200)
    write_photo(folder / "clear.png", width_px=600, height_px=512, alpha=True)
    rng = np.random.default_rng(1)  # noise: its lossless PNG is over the 7 MB a data URI may carry
    Image.fromarray(rng.integers(0, 256, (1600, 1600, 3), dtype=np.uint8)).save(folder / "noise.png")
    emulator.next_task_outcomes("running_s:1.5", "running_s:1.5", "running_s:1.5")
    done = run(["edit", "colorization", "--image", str(folder), "--out", str(tmp_path / "o")], env)
    assert done.returncode == 0, done.stderr
    said = done.stderr
    assert "small.png: resized 300x200 -> 768x512" in said
    assert "clear.png: alpha flattened onto white" in said
    assert re.search(r"noise\.png: sent as JPEG quality \d+", said)
    assert len(list((tmp_path / "o").glob("*_colorization_0.png"))) == 3
    # Three sizes, one run: the second size was sent while the first ran (not after it, as size groups
    # run one after another), and the third as soon as the quota of 2 tasks in flight allowed.
    times = sorted((emulator.task_times(t) for t in emulator.task_ids), key=lambda t: t.submit_s)
    assert len(times) == 3 and times[1].submit_s < times[0].end_s


def test_a_binarized_mask_is_said(env, png, tmp_path: Path) -> None:
    mask = np.zeros((512, 512), np.uint8)
    mask[100:300, 100:300] = 255
    mask[300:320, 100:300] = 90  # a soft edge
    Image.fromarray(mask).save(tmp_path / "mask.png")
    done = run(["edit", "description_edit_with_mask", "--image", str(png), "--mask", str(tmp_path / "mask.png"),
                "--prompt", "a vase", "--out", str(tmp_path / "o")], env)
    assert done.returncode == 0, done.stderr
    assert "in.png: mask binarized at 0.5: 4000 pixels between 0 and 1 became black or white" in done.stderr


def test_a_cache_hit_says_nothing_was_billed(env, emulator, png, tmp_path: Path) -> None:
    args = ["edit", "colorization", "--image", str(png), "--seed", "9"]
    assert run([*args, "--out", str(tmp_path / "1")], env).returncode == 0
    before = len(emulator.requests)
    again = run([*args, "--out", str(tmp_path / "2")], env)
    assert again.returncode == 0 and len(emulator.requests) == before
    assert re.search(r"in\.png: from the result cache \(task [0-9a-f-]+\): nothing sent, nothing billed", again.stderr)
    assert again.stdout.strip().endswith("from cache, nothing billed")


def test_attaching_to_an_earlier_task_is_said(env, emulator, png, tmp_path: Path) -> None:
    emulator.next_task_outcomes("running_s:3")
    args = ["edit", "colorization", "--image", str(png), "--seed", "4"]
    first = start([*args, "--out", str(tmp_path / "1")], env)
    journal = Journal(tmp_path / "state" / "journal.json")
    deadline = time.monotonic() + 30
    while not (journal.path.is_file() and journal.entries() and journal.entries()[0].task_id):
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = run([*args, "--out", str(tmp_path / "2")], env)
    assert first.wait(60) == 0 and second.returncode == 0, second.stderr
    task_id = journal.entries()[0].task_id
    assert f"in.png: attached to task {task_id} of an identical edit already paid for" in second.stderr
    assert emulator.created_count == 1


def test_fetch_shows_the_state_and_the_time_while_it_waits(env, emulator, png, tmp_path: Path) -> None:
    emulator.next_task_outcomes("running_s:4")
    first = start(["edit", "colorization", "--image", str(png), "--out", str(tmp_path / "1")], env)
    journal = Journal(tmp_path / "state" / "journal.json")
    deadline = time.monotonic() + 30
    while not (journal.path.is_file() and journal.entries() and journal.entries()[0].task_id):
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    first.kill()
    first.wait()
    task_id = journal.entries()[0].task_id
    done = run(["fetch", "--out", str(tmp_path / "2")], env)
    assert done.returncode == 0, done.stderr
    assert re.search(rf"fetching task {task_id}: RUNNING, \d+ s", done.stderr), done.stderr
    assert task_id in done.stdout and "fetching costs nothing" in done.stdout
    assert len(list((tmp_path / "2").glob("*.png"))) == 1


def test_the_demo_says_it_is_emulated_in_the_terminal_the_reports_and_the_sheet(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = run(["demo", "--out", str(out)], clean_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "emulated: nothing billed" in done.stdout and "EMULATED" in done.stderr
    for fn in FUNCTIONS:
        report = json.loads((out / f"report_{fn.api_name}.json").read_text(encoding="utf-8"))
        assert report["emulated"] is True and report["cost"]["billed"] == 0
    sheet = Image.open(out / "contact_sheet.png").convert("RGB")
    assert sheet.getpixel((4, 4)) == (150, 20, 20)  # the title band that says EMULATED RESULTS
    # The inpainting stamp lies wholly inside the mask: no mask edge clips it.
    result = np.asarray(Image.open(out / "result_description_edit_with_mask.png").convert("RGB"))
    from wanx_imageedit.nodes.authoring import samples

    mask = np.asarray(samples.sample_mask(lookup("description_edit_with_mask").example.scene)) >= 128
    stamp = (result == 0).all(axis=-1)
    assert stamp.sum() > 1000 and not (stamp & ~mask).any()


def test_the_progress_is_printed_once_at_the_end(env, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    for i in range(3):
        write_photo(folder / f"{i}.png", seed=i)
    done = run(["edit", "colorization", "--image", str(folder), "--out", str(tmp_path / "o")], env)
    assert done.returncode == 0, done.stderr
    finals = [line for line in done.stderr.splitlines() if line.startswith("[3/3]")]
    assert len(finals) == 1 and all(f"{i}.png done" in finals[0] for i in range(3))


def test_a_refused_run_shows_the_error_alone(env, emulator, png, tmp_path: Path) -> None:
    emulator.inject("create", "arrearage")
    done = run(["edit", "colorization", "--image", str(png), "--out", str(tmp_path / "o")], env)
    assert "Arrearage" in one_error_line(done)

