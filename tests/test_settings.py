"""Settings are read the way the official SDK reads them, never show the key, and bind each key
to the endpoint it was configured with: an endpoint stored from the panel never receives the
environment's key or a key file's."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from wanx_imageedit.nodes.core.errors import ConfigError
from wanx_imageedit.nodes.core.settings import (
    BEIJING_BASE_URL,
    KeySource,
    Settings,
    StateSettings,
    StoredSettings,
    key_hint,
    normalise_base_url,
    normalise_currency,
    read_stored_key,
    write_stored,
    write_stored_key,
)

FAKE_KEY = "sk-fake-0000-test-key-abcd"
PANEL_URL = "http://127.0.0.1:7/api/v1"  # an endpoint set from the settings panel


def test_environment_key_wins_over_key_files(tmp_path: Path) -> None:
    (tmp_path / ".dashscope").mkdir()
    (tmp_path / ".dashscope" / "api_key").write_text("sk-from-home-file\n")
    settings = Settings.from_env({"DASHSCOPE_API_KEY": FAKE_KEY}, home=tmp_path)
    assert settings.api_key == FAKE_KEY and settings.base_url == BEIJING_BASE_URL
    assert settings.key_source == KeySource("environment", "DASHSCOPE_API_KEY")
    assert str(settings.key_source) == "environment (DASHSCOPE_API_KEY)"


def test_key_file_path_then_home_file_then_stored(tmp_path: Path) -> None:
    named = tmp_path / "named_key"
    named.write_text("sk-named-file-key\n")
    stored = tmp_path / "comfy_user"
    stored.mkdir()
    (stored / "api_key").write_text("sk-stored-in-comfy")  # a bare key, as stored before keys were bound
    chosen = Settings.from_env({"DASHSCOPE_API_KEY_FILE_PATH": str(named)}, home=tmp_path)
    assert (chosen.api_key, chosen.key_source) == ("sk-named-file-key", KeySource("key_file", str(named)))
    (tmp_path / ".dashscope").mkdir()
    (tmp_path / ".dashscope" / "api_key").write_text("sk-home-file-key")
    assert Settings.from_env({}, home=tmp_path, stored_dir=stored).api_key == "sk-home-file-key"
    (tmp_path / ".dashscope" / "api_key").unlink()
    chosen = Settings.from_env({}, home=tmp_path, stored_dir=stored)
    assert chosen.api_key == "sk-stored-in-comfy" and chosen.key_source.kind == "settings"
    assert str(chosen.key_source) == "ComfyUI settings" and chosen.base_url == BEIJING_BASE_URL


def test_missing_key_says_how_to_set_it_and_mentions_the_region(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DASHSCOPE_API_KEY") as caught:
        Settings.from_env({}, home=tmp_path)
    assert "Beijing" in str(caught.value) and "InvalidApiKey" in str(caught.value)


def test_the_key_never_appears_in_repr_or_hint(tmp_path: Path) -> None:
    settings = Settings.from_env({"DASHSCOPE_API_KEY": FAKE_KEY}, home=tmp_path)
    assert FAKE_KEY not in repr(settings)
    assert FAKE_KEY not in settings.key_hint and settings.key_hint.endswith("…abcd")
    assert (key_hint(FAKE_KEY), key_hint("sk-1234"), key_hint(None)) == ("…abcd", None, None)
    saved = write_stored_key(tmp_path, api_key=FAKE_KEY, base_url="")
    assert FAKE_KEY not in repr(read_stored_key(saved.parent))


@pytest.mark.parametrize(("url", "message"), [
    ("https://dashscope-intl.aliyuncs.com/api/v1", "China \\(Beijing\\)"),
    ("ftp://example.com", "not an http"),
    ("http://gateway.example.com/api/v1", "plain http"),
])
def test_unusable_base_urls_are_refused(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"DASHSCOPE_API_KEY": FAKE_KEY, "DASHSCOPE_HTTP_BASE_URL": url}, home=tmp_path)


def test_base_url_and_limits_from_environment(tmp_path: Path) -> None:
    s = Settings.from_env({"DASHSCOPE_API_KEY": FAKE_KEY, "DASHSCOPE_HTTP_BASE_URL": "http://127.0.0.1:9/api/v1/",
                           "WANX_MAX_CONCURRENT_TASKS": "5", "WANX_SUBMITS_PER_SECOND": "4"}, home=tmp_path)
    assert (s.base_url, s.max_in_flight, s.submits_per_s) == ("http://127.0.0.1:9/api/v1", 5, 4.0)
    with pytest.raises(ConfigError, match="WANX_MAX_CONCURRENT_TASKS must be at least 1"):
        Settings.from_env({"DASHSCOPE_API_KEY": FAKE_KEY, "WANX_MAX_CONCURRENT_TASKS": "0"}, home=tmp_path)


def test_a_stored_endpoint_never_receives_the_environment_or_file_key(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text(json.dumps({"base_url": PANEL_URL, "currency": "usd"}))
    env = {"DASHSCOPE_API_KEY": FAKE_KEY}
    stored = Settings.from_env(env, home=tmp_path, stored_dir=tmp_path)
    assert (stored.base_url, stored.currency) == (BEIJING_BASE_URL, "USD")  # the currency is still used
    env["DASHSCOPE_HTTP_BASE_URL"] = "http://127.0.0.1:8/api/v1"
    assert Settings.from_env(env, home=tmp_path, stored_dir=tmp_path).base_url == "http://127.0.0.1:8/api/v1"
    named = tmp_path / "named_key"
    named.write_text("sk-named-file-key")
    from_file = Settings.from_env({"DASHSCOPE_API_KEY_FILE_PATH": str(named)}, home=tmp_path, stored_dir=tmp_path)
    assert (from_file.key_source.kind, from_file.base_url) == ("key_file", BEIJING_BASE_URL)
    (tmp_path / "settings.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        Settings.from_env(env, home=tmp_path, stored_dir=tmp_path)


def test_a_panel_key_goes_only_to_the_endpoint_it_was_saved_for(tmp_path: Path) -> None:
    path = write_stored_key(tmp_path, api_key=FAKE_KEY, base_url=PANEL_URL + "/")
    write_stored(tmp_path, StoredSettings(base_url=PANEL_URL))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"api_key": FAKE_KEY, "base_url": PANEL_URL}  # key and binding, one file
    chosen = Settings.from_env({}, home=tmp_path, stored_dir=tmp_path)
    assert (chosen.api_key, chosen.base_url, chosen.key_source.kind) == (FAKE_KEY, PANEL_URL, "settings")
    # The stored endpoint changed behind the key's back (a hand edit): the key is not sent anywhere.
    write_stored(tmp_path, StoredSettings(base_url="http://127.0.0.1:6/api/v1"))
    with pytest.raises(ConfigError, match="saved for http://127.0.0.1:7/api/v1") as caught:
        Settings.from_env({}, home=tmp_path, stored_dir=tmp_path)
    assert "Save the key again" in str(caught.value) and FAKE_KEY not in str(caught.value)
    # DASHSCOPE_HTTP_BASE_URL wins over the stored endpoint: the panel key is used only if saved for it.
    write_stored(tmp_path, StoredSettings(base_url=PANEL_URL))
    with pytest.raises(ConfigError, match="saved for"):
        Settings.from_env({"DASHSCOPE_HTTP_BASE_URL": "http://127.0.0.1:5/api/v1"}, home=tmp_path, stored_dir=tmp_path)
    assert Settings.from_env({"DASHSCOPE_HTTP_BASE_URL": PANEL_URL}, home=tmp_path,
                             stored_dir=tmp_path).base_url == PANEL_URL


def test_a_bare_stored_key_is_bound_to_the_default_endpoint(tmp_path: Path) -> None:
    (tmp_path / "api_key").write_text("sk-stored-before-binding\n")
    (tmp_path / "settings.json").write_text(json.dumps({"base_url": PANEL_URL}))
    saved = read_stored_key(tmp_path)
    assert saved is not None and (saved.base_url, saved.migrated) == (BEIJING_BASE_URL, True)
    with pytest.raises(ConfigError, match="saved for https://dashscope.aliyuncs.com/api/v1"):
        Settings.from_env({}, home=tmp_path, stored_dir=tmp_path)  # never to the stored emulator or gateway
    (tmp_path / "settings.json").write_text(json.dumps({"base_url": ""}))
    assert Settings.from_env({}, home=tmp_path, stored_dir=tmp_path).base_url == BEIJING_BASE_URL
    (tmp_path / "api_key").write_text('{"api_key": 7}')
    with pytest.raises(ConfigError, match="unreadable"):
        read_stored_key(tmp_path)


def test_one_spelling_of_endpoints_and_currencies() -> None:
    assert normalise_base_url("  https://gw.example.com/api/v1/ ") == "https://gw.example.com/api/v1"
    assert normalise_base_url("") == normalise_base_url(None) == BEIJING_BASE_URL
    assert [normalise_currency(v) for v in ("usd", " CNY", "", None, "EUR")] == ["USD", "CNY", "CNY", "CNY", None]


def test_state_settings_from_the_environment(tmp_path: Path) -> None:
    default = StateSettings.from_env({}, default_dir=tmp_path / "default", currency="CNY")
    assert default == StateSettings(folder=tmp_path / "default")  # cache on, default size, no limit
    env = {"WANX_STATE_DIR": str(tmp_path / "state"), "WANX_CACHE": "off", "WANX_CACHE_MAX_MB": "1.5",
           "WANX_DAILY_IMAGE_LIMIT": "10", "WANX_DAILY_BUDGET": "0.5"}
    usd = StateSettings.from_env(env, default_dir=tmp_path / "default", currency="USD")
    assert (usd.folder, usd.cache, usd.cache_max_mb) == (tmp_path / "state", False, 1.5)
    assert (usd.daily_image_limit, usd.limit_source) == (10, "WANX_DAILY_IMAGE_LIMIT=10")  # the tighter one
    cny = StateSettings.from_env(env, default_dir=tmp_path, currency="CNY")
    assert (cny.daily_image_limit, cny.limit_source) == (3, "WANX_DAILY_BUDGET=0.5 CNY at 0.14 per image")
    with pytest.raises(ConfigError, match="WANX_DAILY_BUDGET must be a number"):
        StateSettings.from_env({"WANX_DAILY_BUDGET": "lots"}, default_dir=tmp_path)
