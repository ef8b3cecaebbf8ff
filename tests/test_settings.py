"""Settings are read the way the official SDK reads them, and never show the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from wanx_imageedit.nodes.core.errors import ConfigError
from wanx_imageedit.nodes.core.settings import BEIJING_BASE_URL, Settings

FAKE_KEY = "sk-fake-0000-test-key-abcd"


def test_environment_key_wins_over_key_files(tmp_path: Path) -> None:
    (tmp_path / ".dashscope").mkdir()
    (tmp_path / ".dashscope" / "api_key").write_text("sk-from-home-file\n")
    settings = Settings.from_env({"DASHSCOPE_API_KEY": FAKE_KEY}, home=tmp_path)
    assert settings.api_key == FAKE_KEY and settings.base_url == BEIJING_BASE_URL


def test_key_file_path_then_home_file_then_stored(tmp_path: Path) -> None:
    named = tmp_path / "named_key"
    named.write_text("sk-named-file-key\n")
    stored = tmp_path / "comfy_user"
    stored.mkdir()
    (stored / "api_key").write_text("sk-stored-in-comfy")
    assert Settings.from_env({"DASHSCOPE_API_KEY_FILE_PATH": str(named)}, home=tmp_path).api_key == "sk-named-file-key"
    (tmp_path / ".dashscope").mkdir()
    (tmp_path / ".dashscope" / "api_key").write_text("sk-home-file-key")
    assert Settings.from_env({}, home=tmp_path, stored_dir=stored).api_key == "sk-home-file-key"
    (tmp_path / ".dashscope" / "api_key").unlink()
    chosen = Settings.from_env({}, home=tmp_path, stored_dir=stored)
    assert chosen.api_key == "sk-stored-in-comfy" and chosen.key_source == "ComfyUI settings"


def test_missing_key_says_how_to_set_it_and_mentions_the_region(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DASHSCOPE_API_KEY") as caught:
        Settings.from_env({}, home=tmp_path)
    assert "Beijing" in str(caught.value)


def test_the_key_never_appears_in_repr_or_hint() -> None:
    settings = Settings.from_env({"DASHSCOPE_API_KEY": FAKE_KEY})
    assert FAKE_KEY not in repr(settings)
    assert FAKE_KEY not in settings.key_hint and settings.key_hint.endswith("…abcd")


@pytest.mark.parametrize(("url", "message"), [
    ("https://dashscope-intl.aliyuncs.com/api/v1", "China \\(Beijing\\)"),
    ("ftp://example.com", "not an http"),
    ("http://gateway.example.com/api/v1", "plain http"),
])
def test_unusable_base_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"DASHSCOPE_API_KEY": FAKE_KEY, "DASHSCOPE_HTTP_BASE_URL": url})


def test_base_url_and_limits_from_environment() -> None:
    s = Settings.from_env({"DASHSCOPE_API_KEY": FAKE_KEY, "DASHSCOPE_HTTP_BASE_URL": "http://127.0.0.1:9/api/v1/",
                           "WANX_MAX_CONCURRENT_TASKS": "5", "WANX_SUBMITS_PER_SECOND": "4"})
    assert (s.base_url, s.max_in_flight, s.submits_per_s) == ("http://127.0.0.1:9/api/v1", 5, 4.0)
    with pytest.raises(ConfigError, match="WANX_MAX_CONCURRENT_TASKS must be at least 1"):
        Settings.from_env({"DASHSCOPE_API_KEY": FAKE_KEY, "WANX_MAX_CONCURRENT_TASKS": "0"})


def test_stored_endpoint_and_currency_lose_to_the_environment(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text('{"base_url": "http://127.0.0.1:7/api/v1", "currency": "usd"}')
    env = {"DASHSCOPE_API_KEY": FAKE_KEY}
    stored = Settings.from_env(env, stored_dir=tmp_path)
    assert (stored.base_url, stored.currency) == ("http://127.0.0.1:7/api/v1", "USD")
    env["DASHSCOPE_HTTP_BASE_URL"] = "http://127.0.0.1:8/api/v1"
    assert Settings.from_env(env, stored_dir=tmp_path).base_url == "http://127.0.0.1:8/api/v1"
    (tmp_path / "settings.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        Settings.from_env(env, stored_dir=tmp_path)
