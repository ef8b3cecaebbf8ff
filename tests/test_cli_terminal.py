"""What only an interactive terminal shows: the status line rewritten in place within the
terminal's width, and Ctrl-C (SIGINT to the process, as the terminal sends it) mid-task. The CLI
runs on a pseudo-terminal, against the emulator over loopback."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
import requests

from cli_helpers import Pty, clean_env, screen_lines, status_segments, write_photo
from conftest import TEST_KEY
from wanx_imageedit.nodes.emulator import Emulator

COLUMNS = 60
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX only")


@pytest.fixture
def env(emulator, tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path, DASHSCOPE_API_KEY=TEST_KEY, DASHSCOPE_HTTP_BASE_URL=emulator.base_url)


def states_in(segment: str) -> int:
    """How many images a status line accounts for: one state each, or a count per state."""
    body = segment.split("  ", 1)[1]
    parts = body.split(", ")
    counts = [int(m.group(1)) for part in parts if (m := re.fullmatch(r"(\d+) \S.*", part))]
    return sum(counts) if len(counts) == len(parts) else len(parts)


def test_the_status_line_shows_every_image_within_the_width_and_ends_once(env, emulator, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    names = [f"holiday_photo_from_the_beach_{i}.png" for i in range(3)]
    for i, name in enumerate(names):
        write_photo(folder / name, seed=i)
    emulator.next_task_outcomes("running_s:1.2", "running_s:1.2", "running_s:1.2")
    terminal = Pty(["edit", "colorization", "--image", str(folder), "--out", str(tmp_path / "o")], env,
                   columns=COLUMNS)
    assert terminal.finish() == 0, terminal.text
    segments = status_segments(terminal.text)
    assert len(segments) >= 3  # rewritten as the states changed
    for segment in segments:
        assert len(segment) < COLUMNS, segment
        assert states_in(segment) == 3, segment  # every image, not only those in flight
    finals = [line for line in screen_lines(terminal.text) if line.startswith("[")]
    assert finals == [segments[-1]] and finals[0].startswith("[3/3]")  # left on screen once


def test_a_refused_run_leaves_only_its_error_on_screen(env, emulator, tmp_path: Path) -> None:
    emulator.inject("create", "arrearage")
    terminal = Pty(["edit", "colorization", "--image", str(write_photo(tmp_path / "in.png")), "--out",
                    str(tmp_path / "o")], env, columns=COLUMNS)
    assert terminal.finish() == 2
    (line,) = screen_lines(terminal.text)
    assert line.startswith("error: the service refused the task") and "Arrearage" in line


def wait_for_status(emulator: Emulator, terminal: Pty, status: str) -> str:
    terminal.wait_for(lambda: bool(emulator.task_ids) and emulator.task_status(emulator.task_ids[0]) == status)
    terminal.wait_for(lambda: bool(status_segments(terminal.text)))  # the status line is up
    return emulator.task_ids[0]


def test_ctrl_c_on_a_running_task_says_it_is_billed_and_how_to_recover_it(env, emulator, tmp_path: Path) -> None:
    emulator.next_task_outcomes("running_s:30")
    terminal = Pty(["edit", "colorization", "--image", str(write_photo(tmp_path / "in.png")), "--out",
                    str(tmp_path / "o")], env, columns=COLUMNS)
    task_id = wait_for_status(emulator, terminal, "RUNNING")
    os.kill(terminal.process.pid, signal.SIGINT)
    assert terminal.finish() == 130
    assert "Traceback" not in terminal.text and "KeyboardInterrupt" not in terminal.text
    expected = (f"canceled by the user: task {task_id} was already running and will be billed; recover it with "
                f"`wanx-imageedit fetch {task_id}`.")
    assert expected in screen_lines(terminal.text)  # a line of its own, not glued to the status line
    assert f"(task {task_id}" not in terminal.text  # the id is not repeated as a tag
    assert any(r.route == "cancel" for r in emulator.requests)


def test_ctrl_c_on_a_pending_task_cancels_it_for_free(tmp_path: Path) -> None:
    with Emulator(api_keys=(TEST_KEY,), pending_s=30, running_s=(0.1, 0.2)) as emulator:
        env = clean_env(tmp_path, DASHSCOPE_API_KEY=TEST_KEY, DASHSCOPE_HTTP_BASE_URL=emulator.base_url)
        terminal = Pty(["edit", "colorization", "--image", str(write_photo(tmp_path / "in.png")), "--out",
                        str(tmp_path / "o")], env, columns=COLUMNS)
        task_id = wait_for_status(emulator, terminal, "PENDING")
        os.kill(terminal.process.pid, signal.SIGINT)
        assert terminal.finish() == 130
        assert emulator.task_status(task_id) == "CANCELED" and emulator.billed_image_count == 0
    assert f"canceled by the user: task {task_id} was pending and is canceled (not billed)." \
        in screen_lines(terminal.text)
    assert "Traceback" not in terminal.text


def test_ctrl_c_while_fetch_waits_says_the_task_keeps_running(env, emulator, tmp_path: Path) -> None:
    emulator.next_task_outcomes("running_s:30")
    from test_emulator import make_body

    created = requests.post(f"{emulator.base_url}/services/aigc/image2image/image-synthesis", json=make_body(),
                            headers={"Authorization": f"Bearer {TEST_KEY}", "X-DashScope-Async": "enable"}, timeout=10)
    task_id = created.json()["output"]["task_id"]
    terminal = Pty(["fetch", task_id, "--out", str(tmp_path / "o")], env, columns=100)
    terminal.wait_for(lambda: f"fetching task {task_id}: RUNNING" in terminal.text)
    os.kill(terminal.process.pid, signal.SIGINT)
    assert terminal.finish() == 130
    lines = screen_lines(terminal.text)
    assert any(line.startswith(f"stopped waiting for task {task_id}; it keeps running on the service")
               for line in lines), lines
    assert terminal.text.count(task_id) == terminal.text.count(f"fetching task {task_id}") + 1
    assert "Traceback" not in terminal.text


def test_ctrl_c_keeps_the_images_that_had_arrived(env, emulator, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_photo(folder / "a.png", seed=1)
    write_photo(folder / "b.png", seed=2)
    emulator.next_task_outcomes("ok", "running_s:30")  # the first image arrives, the second keeps running
    terminal = Pty(["edit", "colorization", "--image", str(folder), "--out", str(tmp_path / "o")], env,
                   columns=COLUMNS)
    terminal.wait_for(lambda: "done" in terminal.text and "RUNNING" in terminal.text)
    os.kill(terminal.process.pid, signal.SIGINT)
    assert terminal.finish() == 130
    kept = sorted((tmp_path / "o").glob("*_colorization_0.*"))
    assert len(kept) == 1 and "it had arrived before the cancel" in terminal.text  # billed, so never dropped
    assert emulator.downloaded_count == 1
