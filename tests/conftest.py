"""Test bootstrap: the repository root is imported as the package `wanx_imageedit` from the
working tree (never as a top-level `nodes`, which is ComfyUI's), whether or not it is installed."""

from __future__ import annotations

from pathlib import Path

from pack_import import register_pack

register_pack()


# --- shared fixtures ----------------------------------------------------------------------------
# Imported after the pack is registered above.
from collections.abc import Iterator  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from comfy_host import network_namespace, remove_namespace  # noqa: E402
from wanx_imageedit.nodes.core.client import DashScopeClient, Timeouts  # noqa: E402
from wanx_imageedit.nodes.core.polling import PollPolicy  # noqa: E402
from wanx_imageedit.nodes.core.quota import Quota  # noqa: E402
from wanx_imageedit.nodes.core.settings import Settings  # noqa: E402
from wanx_imageedit.nodes.emulator import Emulator  # noqa: E402

TEST_KEY = "sk-emulator-key"
FAST_POLL = PollPolicy(time_scale=0.05)  # 0.05 s first polls, 0.02 s when close: tests stay fast


@pytest.fixture
def emulator():
    with Emulator(api_keys=(TEST_KEY,), running_s=(0.15, 0.25)) as running:
        yield running


def settings_for(emulator: Emulator, **overrides: object) -> Settings:
    return Settings(api_key=TEST_KEY, key_source="test", base_url=emulator.base_url, **overrides)


@pytest.fixture
def client(emulator: Emulator) -> DashScopeClient:
    return DashScopeClient(settings_for(emulator), timeouts=Timeouts(connect_retry_s=0.05))


@pytest.fixture
def quota() -> Quota:
    """A fresh limiter per test, at the service's documented limits."""
    return Quota(max_in_flight=2, submits_per_s=2)


def photo(*, batch: int = 1, width_px: int = 512, height_px: int = 512, channels: int = 3,
          seed: int = 0) -> torch.Tensor:
    """A photo-like IMAGE tensor: smooth gradients plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height_px, 0:width_px].astype(np.float32)
    base = np.stack([x / width_px, y / height_px, (x + y) / (width_px + height_px)], axis=-1)
    images = np.clip(base[None] + rng.normal(0, 0.02, (batch, height_px, width_px, 3)), 0, 1).astype(np.float32)
    if channels == 4:
        images = np.concatenate([images, np.ones((batch, height_px, width_px, 1), np.float32)], axis=-1)
    return torch.from_numpy(images)


def box_mask(*, width_px: int = 512, height_px: int = 512) -> torch.Tensor:
    mask = torch.zeros((1, height_px, width_px))
    mask[:, height_px // 4: height_px // 2, width_px // 4: width_px // 2] = 1.0
    return mask


# --- the home folder stays untouched ------------------------------------------------------------
# No test may write outside its tmp folders: the pack's state and the SDK's key file in the home
# folder are snapshotted when the session starts and compared when it ends.
GUARDED_HOME_DIRS = (".wanx-imageedit", ".dashscope")


def home_state(home: Path) -> dict[str, object]:
    """Per guarded folder: None when absent, else every entry below it with its size and mtime."""
    state: dict[str, object] = {}
    for name in GUARDED_HOME_DIRS:
        root = home / name
        if not root.exists():
            state[name] = None
            continue
        entries = []
        for path in sorted(root.rglob("*")):
            info = path.stat()
            entries.append((str(path.relative_to(root)), path.is_dir(), 0 if path.is_dir() else info.st_size,
                            info.st_mtime_ns))
        state[name] = entries
    return state


@pytest.fixture(scope="session", autouse=True)
def home_folder_untouched():
    home = Path.home()
    before = home_state(home)
    yield
    after = home_state(home)
    changed = [name for name in GUARDED_HOME_DIRS if before[name] != after[name]]
    if changed:
        pytest.fail(f"the test session changed {', '.join(str(home / name) for name in changed)} "
                    f"(before: {[before[n] for n in changed]}, after: {[after[n] for n in changed]}); "
                    "a test wrote outside its tmp folder (set WANX_STATE_DIR and HOME for subprocesses)",
                    pytrace=False)


@pytest.fixture(scope="module")
def netns() -> Iterator[tuple[str, str, str] | str]:
    """(namespace, this machine's address on its link, the namespace's address) of a network namespace
    made for the test (another machine, as far as ComfyUI can tell), or why there is none."""
    made = network_namespace()
    yield made
    if not isinstance(made, str):
        remove_namespace(made[0])
