"""A real ComfyUI for the host tests, run headless beside the project (never vendored).

Where it is looked for: COMFYUI_PATH, else ~/ComfyUI. The Python that runs it: COMFYUI_PYTHON,
else <ComfyUI>/.venv/bin/python, else <ComfyUI>/venv/bin/python. Without both, host tests skip."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "wanx_imageedit"


def find_host() -> tuple[Path, Path] | str:
    """(ComfyUI folder, its python), or the reason the host tests must skip."""
    root = Path(os.environ.get("COMFYUI_PATH") or Path.home() / "ComfyUI").expanduser()
    if not (root / "main.py").is_file() or not (root / "comfyui_version.py").is_file():
        return f"no ComfyUI checkout at {root} (set COMFYUI_PATH to one)"
    candidates = [os.environ.get("COMFYUI_PYTHON"), root / ".venv/bin/python", root / "venv/bin/python"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return root, Path(candidate)
    return f"no Python for ComfyUI at {root}/.venv (set COMFYUI_PYTHON to one with ComfyUI's requirements)"


def network_namespace() -> tuple[str, str, str] | str:
    """Another machine, as far as a server here can tell: a network namespace joined to this one by
    a veth pair. (namespace, this machine's address on the link, the namespace's address), or why
    there is none (it needs root and iproute2). A server reaches it when it also listens on the
    second address; remove it with remove_namespace(namespace)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2 for a network namespace"
    name = f"wanx{os.getpid() % 100000}"
    link, subnet = _veth(name), f"10.231.{os.getpid() % 250}"
    commands = [["ip", "netns", "add", name],
                ["ip", "link", "add", link + "a", "type", "veth", "peer", "name", link + "b"],
                ["ip", "link", "set", link + "b", "netns", name],
                ["ip", "addr", "add", f"{subnet}.1/30", "dev", link + "a"],
                ["ip", "link", "set", link + "a", "up"],
                ["ip", "-n", name, "addr", "add", f"{subnet}.2/30", "dev", link + "b"],
                ["ip", "-n", name, "link", "set", link + "b", "up"],
                ["ip", "-n", name, "link", "set", "lo", "up"]]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            remove_namespace(name)
            return f"could not make a network namespace: {' '.join(command)}: {result.stderr.strip()}"
    return name, f"{subnet}.1", f"{subnet}.2"


def remove_namespace(name: str) -> None:
    """Remove a namespace made by network_namespace() and its veth pair (either may be gone)."""
    subprocess.run(["ip", "link", "del", _veth(name) + "a"], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _veth(namespace: str) -> str:
    """The veth pair's name without its a/b end (interface names are at most 15 characters)."""
    return "wx" + namespace.removeprefix("wanx")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ComfyHost:
    root: Path
    python: Path
    workdir: Path
    env: Mapping[str, str]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()  # e.g. ("--front-end-root", DIR) for another front end
    listen: str = "127.0.0.1"  # comma-separated addresses; loopback must stay first (self.url uses it)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "out"

    @property
    def input_dir(self) -> Path:
        return self.workdir / "base" / "input"

    @property
    def log_path(self) -> Path:
        return self.workdir / "comfyui.log"

    def start(self, *, timeout_s: float = 180.0) -> ComfyHost:
        for sub in ("base/custom_nodes", "base/input", "user", "out", "tmp"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        link = self.workdir / "base" / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)
        for sample in (REPO_ROOT / "workflows" / "inputs").glob("*.png"):
            shutil.copy(sample, self.input_dir / sample.name)
        self.port = free_port()
        command = [
            str(self.python), "main.py", "--cpu", "--listen", self.listen, "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(self.workdir / "base"),
            "--user-directory", str(self.workdir / "user"), "--output-directory", str(self.output_dir),
            "--temp-directory", str(self.workdir / "tmp"), "--database-url", "sqlite:///:memory:",
            "--disable-api-nodes", *self.extra_args,
        ]
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, cwd=self.root, env=dict(self.env), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}: {self.log()[-3000:]}")
            try:
                if requests.get(self.url + "/object_info", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {timeout_s} s: {self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def object_info(self) -> dict[str, Any]:
        return requests.get(self.url + "/object_info", timeout=30).json()

    def queue(self, prompt: Mapping[str, Any]) -> str:
        response = requests.post(self.url + "/prompt", json={"prompt": prompt, "client_id": uuid.uuid4().hex},
                                 timeout=30)
        if response.status_code != 200:
            raise AssertionError(f"/prompt refused: {response.text[:3000]}")
        return response.json()["prompt_id"]

    def wait(self, prompt_id: str, *, timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            history = requests.get(f"{self.url}/history/{prompt_id}", timeout=10).json()
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.1)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout_s} s")

    def interrupt(self) -> None:
        requests.post(self.url + "/interrupt", json={}, timeout=10)


def ui_to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a UI-format workflow to the API prompt the frontend would queue: widget values in
    input_order (a seed with control_after_generate carries one extra, unsent value), then links."""
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, Any] = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        for name in widget_names(info):
            spec = _spec(info, name)
            inputs[name] = values.pop(0)
            if spec[1].get("control_after_generate") or (spec[0] == "INT" and name in ("seed", "noise_seed")):
                values.pop(0)  # the control widget's value: saved in the workflow, never sent
            if spec[1].get("image_upload"):
                values.pop(0)  # LoadImage's upload button
        for socket_in in node.get("inputs", []):
            link_id = socket_in.get("link")
            if link_id is not None:
                link = links[link_id]
                inputs[socket_in["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"}


def widget_names(info: Mapping[str, Any]) -> list[str]:
    names = []
    for group in ("required", "optional"):
        for name in info.get("input_order", {}).get(group, []):
            kind, options = _spec(info, name)
            is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
            if is_widget and not options.get("forceInput"):
                names.append(name)
    return names


def _spec(info: Mapping[str, Any], name: str) -> tuple[Any, dict[str, Any]]:
    for group in ("required", "optional"):
        if name in info["input"].get(group, {}):
            entry = info["input"][group][name]
            return entry[0], (entry[1] if len(entry) > 1 else {})
    raise KeyError(name)


def load_workflow(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
