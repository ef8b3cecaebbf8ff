"""Never pay twice, never lose a paid result: the journal, resume, the result cache and the
daily budget, through real processes and loopback HTTP against the emulator."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import FAST_POLL, TEST_KEY, photo
from pack_import import BOOT
from wanx_imageedit.nodes.core import images, runner
from wanx_imageedit.nodes.core.cache import ResultCache
from wanx_imageedit.nodes.core.errors import TaskFailedError
from wanx_imageedit.nodes.core.functions import lookup
from wanx_imageedit.nodes.core.journal import MAX_ENTRIES, Entry, Journal
from wanx_imageedit.nodes.core.request import EditRequest, prepare
from wanx_imageedit.nodes.core.store import BudgetError, Store


def cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    code = BOOT + f"from wanx_imageedit.nodes.cli import main; sys.exit(main({args!r}))"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture
def cli_env(emulator, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_"))}
    env.update(DASHSCOPE_API_KEY=TEST_KEY, DASHSCOPE_HTTP_BASE_URL=emulator.base_url,
               WANX_STATE_DIR=str(tmp_path / "state"), HOME=str(tmp_path))
    return env


@pytest.fixture
def input_png(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray((photo()[0].numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def store_in(folder: Path, **env: str) -> Store:
    return Store.open(default_dir=folder, environ=env)


def colorize(seed: int | None = 3, *, n: int = 1) -> EditRequest:
    values = {"n": n} if seed is None else {"n": n, "seed": seed}
    return prepare(lookup("colorization"), image=photo(), mask=None, prompt="", values=values)


# --- journal ------------------------------------------------------------------------------------

def test_every_accepted_task_is_journaled_with_its_end(emulator, client, quota, tmp_path: Path) -> None:
    store = store_in(tmp_path)
    outcome = runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
    (entry,) = store.journal.entries()
    assert entry.task_id == outcome.items[0].task_id and entry.function == "colorization"
    assert (entry.status, entry.image_count) == ("SUCCEEDED", 1) and entry.results.startswith("cache:")
    text = b"".join(path.read_bytes() for path in tmp_path.glob("state.db*")).decode("latin-1")
    assert TEST_KEY not in text and "base64" not in text


def test_the_journal_stays_bounded_in_count_and_age(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.json", max_entries=20)
    now = time.time()
    journal.record_submitted(Entry(task_id="old", function="expand", digest="d", submitted_at=now - 3 * 86400, n=1))
    for i in range(25):
        journal.record_submitted(Entry(task_id=f"t{i}", function="expand", digest="d", submitted_at=now + i, n=1))
    entries = journal.entries()
    assert len(entries) == 20 and entries[0].task_id == "t5"
    assert Journal(tmp_path / "j2.json").max_entries == MAX_ENTRIES


def test_a_writer_killed_mid_write_never_corrupts_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    writer = BOOT + (
        "import time; from pathlib import Path; from wanx_imageedit.nodes.core.journal import Journal, Entry; "
        f"j = Journal(Path({str(path)!r})); i = 0\n"
        "while True:\n"
        "    j.record_submitted(Entry(task_id=f't{i}', function='expand', digest='d' * 64,"
        " submitted_at=time.time(), n=1)); i += 1")
    for delay_s in (0.4, 0.55, 0.7):
        process = subprocess.Popen([sys.executable, "-c", writer])
        time.sleep(delay_s)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert len(Journal(path).entries()) > 0  # parses: never half a file


# --- resume -------------------------------------------------------------------------------------

def test_a_process_killed_mid_poll_loses_nothing_and_pays_once(emulator, cli_env, input_png, tmp_path) -> None:
    emulator.next_task_outcomes("running_s:4")
    first = cli(["edit", "colorization", "--image", str(input_png), "--seed", "5", "--out", str(tmp_path / "a")],
                cli_env)
    journal = Journal(Path(cli_env["WANX_STATE_DIR"]) / "state.db")
    deadline = time.monotonic() + 20
    while not (journal.path.is_file() and journal.entries() and journal.entries()[0].task_id):
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    task_id = journal.entries()[0].task_id
    assert emulator.task_status(task_id) in ("PENDING", "RUNNING")
    first.send_signal(signal.SIGKILL)
    first.wait()
    creates_before = emulator.created_count
    second = cli(["fetch", "--out", str(tmp_path / "b")], cli_env)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert task_id in out and emulator.created_count == creates_before == 1
    (saved,) = (tmp_path / "b").glob("*.png")
    task = requests.get(f"{emulator.base_url}/tasks/{task_id}", headers={"Authorization": f"Bearer {TEST_KEY}"},
                        timeout=5).json()
    served = images.decode_image(requests.get(task["output"]["results"][0]["url"], timeout=5).content)
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), served)
    assert journal.entries()[0].results.startswith("cache:")  # recovered and kept


def test_recovering_an_expired_task_says_so(emulator, client, quota, tmp_path: Path) -> None:
    store = store_in(tmp_path)
    outcome = runner.run(colorize(seed=None), client=client, quota=quota, policy=FAST_POLL, store=store)
    emulator.advance(25 * 3600)
    with pytest.raises(TaskFailedError, match="no longer has task") as caught:
        runner.recover(outcome.items[0].task_id, client=client, store=store)
    assert caught.value.code == "UNKNOWN" and "24 hours" in str(caught.value)


def test_recovering_a_cached_task_sends_nothing(emulator, client, quota, tmp_path: Path) -> None:
    store = store_in(tmp_path)
    outcome = runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
    before = len(emulator.requests)
    recovered = runner.recover(outcome.items[0].task_id, client=client, store=store)
    assert recovered.source == "cache" and len(emulator.requests) == before
    assert np.array_equal(recovered.images[0], outcome.items[0].images[0])


# --- result cache -------------------------------------------------------------------------------

def test_a_cache_hit_sends_nothing_and_a_forced_run_sends_exactly_one(emulator, client, quota, tmp_path) -> None:
    store = store_in(tmp_path)
    first = runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
    before = len(emulator.requests)
    again = runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
    assert len(emulator.requests) == before and again.items[0].cached and again.image_count == 0
    assert np.array_equal(again.images_tensor().numpy(), first.images_tensor().numpy())
    runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store, reuse=False)
    assert sum(1 for r in emulator.requests[before:] if r.route == "create") == 1


def test_anything_that_changes_the_edit_misses_the_cache(emulator, client, quota, tmp_path) -> None:
    store = store_in(tmp_path)
    runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
    for request in (colorize(seed=4), colorize(n=2), colorize(seed=None),
                    prepare(lookup("colorization"), image=photo(seed=1), mask=None, prompt="", values={"seed": 3}),
                    prepare(lookup("colorization"), image=photo(), mask=None, prompt="red", values={"seed": 3})):
        before = emulator.created_count
        runner.run(request, client=client, quota=quota, policy=FAST_POLL, store=store)
        assert emulator.created_count == before + 1


def test_an_identical_edit_in_a_new_process_costs_nothing(emulator, cli_env, input_png, tmp_path) -> None:
    args = ["edit", "colorization", "--image", str(input_png), "--seed", "9"]
    first = cli([*args, "--out", str(tmp_path / "1")], cli_env)
    assert first.wait(60) == 0, first.communicate()
    before = len(emulator.requests)
    second = cli([*args, "--out", str(tmp_path / "2")], cli_env)
    assert second.wait(60) == 0, second.communicate()
    assert len(emulator.requests) == before
    (a,), (b,) = (tmp_path / "1").glob("*.png"), (tmp_path / "2").glob("*.png")
    assert a.read_bytes() == b.read_bytes()


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path, max_bytes=2500)
    for key in ("aa1", "bb2", "cc3"):
        cache.put(key, [b"x" * 1000], meta={})
        time.sleep(0.02)
    assert cache.get("aa1") is None and cache.get("cc3") is not None


def test_the_cache_can_be_turned_off(tmp_path: Path) -> None:
    assert store_in(tmp_path, WANX_CACHE="off").cache is None
    assert store_in(tmp_path, WANX_CACHE_MAX_MB="1").cache.max_bytes == 1024 * 1024


# --- budget -------------------------------------------------------------------------------------

def test_a_budget_refusal_sends_nothing(emulator, client, quota, tmp_path: Path) -> None:
    store = store_in(tmp_path, WANX_DAILY_IMAGE_LIMIT="3")
    runner.run(colorize(n=2), client=client, quota=quota, policy=FAST_POLL, store=store)
    before = len(emulator.requests)
    with pytest.raises(BudgetError, match="2 of today's limit of 3") as caught:
        runner.run(colorize(seed=8, n=2), client=client, quota=quota, policy=FAST_POLL, store=store)
    assert len(emulator.requests) == before
    assert "WANX_DAILY_IMAGE_LIMIT" in str(caught.value) and "Nothing was sent" in str(caught.value)
    # an identical edit is served from the cache: nothing to send, so the limit does not apply
    assert runner.run(colorize(n=2), client=client, quota=quota, policy=FAST_POLL, store=store).items[0].cached


def test_a_money_budget_becomes_an_image_limit(tmp_path: Path) -> None:
    assert store_in(tmp_path, WANX_DAILY_BUDGET="0.30").daily_image_limit == 2
    usd = Store.open(default_dir=tmp_path, environ={"WANX_DAILY_BUDGET": "0.1"}, currency="USD")
    assert usd.daily_image_limit == 4 and "USD" in (usd.limit_source or "")
    with pytest.raises(BudgetError):
        store_in(tmp_path, WANX_DAILY_BUDGET="0.1").check_budget(images=1)


def test_the_journal_is_plain_sqlite_shared_in_wal_mode(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state.db")
    journal.record_submitted(Entry(task_id="t", function="expand", digest="d", submitted_at=time.time(), n=2))
    journal.update("t", status="SUCCEEDED", image_count=2)
    with sqlite3.connect(tmp_path / "state.db") as db:  # any SQLite tool can read it
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT status, image_count FROM tasks WHERE task_id = 't'").fetchone() == ("SUCCEEDED", 2)
        assert db.execute("SELECT value FROM meta WHERE key = 'journal_schema'").fetchone()[0] == "2"


def test_the_old_json_journal_is_imported_once(tmp_path: Path) -> None:
    now = time.time()
    (tmp_path / "journal.json").write_text(json.dumps({"version": 1, "tasks": [
        {"task_id": "done", "function": "expand", "digest": "d1", "submitted_at": now - 60, "n": 1,
         "status": "SUCCEEDED", "image_count": 1, "results": "cache:d1"},
        {"task_id": "running", "function": "expand", "digest": "d2", "submitted_at": now - 30, "n": 2,
         "status": "RUNNING"}]}))
    journal = Journal(tmp_path / "state.db")
    assert [e.task_id for e in journal.entries()] == ["done", "running"]
    assert journal.newest_unrecovered().task_id == "running" and journal.images_since(now - 3600) == 3
    assert not (tmp_path / "journal.json").exists() and (tmp_path / "journal.json.imported").is_file()
    assert len(Journal(tmp_path / "state.db").entries()) == 2  # a second open imports nothing again


def test_a_damaged_database_is_set_aside_and_a_new_one_works(tmp_path: Path, caplog) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    journal = Journal(tmp_path / "state.db")
    journal.record_submitted(Entry(task_id="t", function="expand", digest="d", submitted_at=time.time(), n=1))
    assert [e.task_id for e in journal.entries()] == ["t"]
    (aside,) = tmp_path.glob("state.db.damaged-*")
    assert aside.read_bytes().startswith(b"this is not a database")
    assert any("damaged" in r.message and r.levelname == "ERROR" for r in caplog.records)


def test_a_damaged_cache_entry_is_recovered_from_the_service(emulator, client, quota, tmp_path: Path) -> None:
    store = store_in(tmp_path)
    outcome = runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
    (stored,) = (tmp_path / "cache").glob("*/*/0.png")
    stored.write_bytes(b"not a png any more")
    recovered = runner.recover(outcome.items[0].task_id, client=client, store=store)
    assert recovered.source == "service" and emulator.created_count == 1
    assert np.array_equal(recovered.images[0], outcome.items[0].images[0])


def test_many_processes_opening_a_new_database_at_once_all_get_it(tmp_path: Path) -> None:
    # Switching a new database to WAL needs it alone for a moment: a process that finds it busy waits,
    # and never takes the busy journal for a damaged one.
    opener = BOOT + ("from pathlib import Path; from wanx_imageedit.nodes.core.journal import Journal, Entry; "
                     "from wanx_imageedit.nodes.core.quota import Quota; import os, time; "
                     "db = Path(os.environ['DB']); quota = Quota(max_in_flight=2, submits_per_s=2, db_path=db); "
                     "assert quota.shared, 'the quota fell back to this process alone'; j = Journal(db); "
                     "j.record_submitted(Entry(task_id=f't{os.getpid()}', function='expand', digest='d', "
                     "submitted_at=time.time(), n=1))")
    env = {**os.environ, "DB": str(tmp_path / "state.db")}
    children = [subprocess.Popen([sys.executable, "-c", opener], env=env, stderr=subprocess.PIPE, text=True)
                for _ in range(6)]
    errors = [child.communicate(timeout=60)[1] for child in children]
    assert [child.returncode for child in children] == [0] * 6, errors
    assert len(Journal(tmp_path / "state.db").entries()) == 6 and not list(tmp_path.glob("state.db.damaged-*"))
