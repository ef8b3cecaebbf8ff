"""The API key appears in no log line, repr, error message or file we write."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import FAST_POLL, TEST_KEY, photo
from wanx_imageedit.nodes import cli
from wanx_imageedit.nodes.core import runner
from wanx_imageedit.nodes.core.errors import WanxError
from wanx_imageedit.nodes.core.functions import lookup
from wanx_imageedit.nodes.core.request import prepare


def test_the_key_leaks_nowhere(emulator, client, quota, caplog, tmp_path: Path, capsys, monkeypatch) -> None:
    caplog.set_level(logging.DEBUG)  # includes urllib3's request lines
    texts = [repr(client), repr(client.settings), str(client.settings)]
    request = prepare(lookup("colorization"), image=photo(), mask=None, prompt="")
    outcome = runner.run(request, client=client, quota=quota, policy=FAST_POLL)
    texts.append(str(outcome.report()))
    emulator.inject("list", "http503+always")  # so a lost create answer cannot be reconciled: an error
    for fault in ("invalid_key", "drop_after"):
        emulator.inject("create", fault)
        with pytest.raises(WanxError) as caught:  # noqa: PT012
            runner.run(request, client=client, quota=quota, policy=FAST_POLL)
        texts += [str(caught.value), repr(caught.value)]
    monkeypatch.setenv("DASHSCOPE_API_KEY", TEST_KEY)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", emulator.base_url)
    monkeypatch.setenv("WANX_STATE_DIR", str(tmp_path / "state"))  # the journal and cache stay in tmp
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "in.png").write_bytes(_png())
    assert cli.main(["edit", "colorization", "--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    texts += [captured.out, captured.err, caplog.text]
    texts += [p.read_bytes().decode("latin-1") for p in (tmp_path / "out").iterdir()]
    texts += [p.read_bytes().decode("latin-1") for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert texts and not any(TEST_KEY in text for text in texts)
    assert all(r.auth_valid for r in emulator.requests if r.route in ("create", "query"))


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (512, 512), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()
