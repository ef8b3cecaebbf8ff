"""The command line: per-function flags come from the table, wrong ones are refused before sending."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_KEY, photo
from PIL import Image

from wanx_imageedit.nodes import cli


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray((photo()[0].numpy() * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture
def service(emulator, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("DASHSCOPE_API_KEY", TEST_KEY)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", emulator.base_url)
    monkeypatch.setenv("WANX_STATE_DIR", str(tmp_path / "state"))
    return emulator


def test_every_parameter_of_the_table_is_a_flag() -> None:
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["edit"].format_help()
    for flag in ("--strength", "--top-scale", "--bottom-scale", "--left-scale", "--right-scale", "--upscale-factor",
                 "--is-sketch", "--n", "--seed", "--watermark", "--style", "--mask", "--new-run"):
        assert flag in help_text


def test_a_flag_the_function_does_not_take_is_refused_before_sending(service, png, tmp_path, capsys) -> None:
    code = cli.main(["edit", "expand", "--image", str(png), "--prompt", "p", "--strength", "0.3",
                     "--out", str(tmp_path / "o")])
    assert code == 2 and "does not take strength" in capsys.readouterr().err
    assert service.requests == []


def test_edit_writes_results_and_a_report_and_tasks_lists_it(service, png, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    assert cli.main(["edit", "super_resolution", "--image", str(png), "--upscale-factor", "2", "--out", str(out)]) == 0
    (result,) = out.glob("*.png")
    assert Image.open(result).size == (1024, 1024)
    report = next(out.glob("*_report.json")).read_text(encoding="utf-8")
    assert '"image_count": 1' in report and '"billed": 0.14' in report
    capsys.readouterr()
    assert cli.main(["tasks"]) == 0
    assert service.task_ids[0] in capsys.readouterr().out


def test_unknown_function_and_missing_key_explain_themselves(png, tmp_path, monkeypatch, capsys) -> None:
    assert cli.main(["edit", "paint_everything", "--image", str(png)]) == 2
    assert "unknown edit function" in capsys.readouterr().err
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("DASHSCOPE_API_KEY_FILE_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli.main(["edit", "colorization", "--image", str(png), "--out", str(tmp_path / "o")]) == 2
    assert "no DashScope API key" in capsys.readouterr().err


def test_the_private_emulator_runs_a_folder_as_a_batch(png, tmp_path, capsys) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(png.read_bytes())
    assert cli.main(["edit", "colorization", "--image", str(folder), "--emulator", "--out", str(tmp_path / "o")]) == 0
    assert len(list((tmp_path / "o").glob("*.png"))) == 3
    assert "3/3" in capsys.readouterr().err
