"""The output lock on a local folder: flock, released by the kernel when its holder dies."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from batchline.config import ConfigError
from batchline.lock import LOCK_NAME, output_lock
from batchline.storage import OutputLayout
from tests.support import lock_holder


def test_a_second_run_is_refused_naming_the_first(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    with output_lock(layout, "flow run first (id-1)"):
        started = time.monotonic()
        with (
            pytest.raises(ConfigError) as refused,
            output_lock(layout, "flow run second", wait_seconds=0.5, poll_seconds=0.1),
        ):
            pytest.fail("the second run got the lock")
        assert time.monotonic() - started >= 0.5, "it waited before refusing"
    assert str(refused.value).startswith(
        f"output {layout.root} is in use by flow run first (id-1) "
        f"(pid {os.getpid()} on {socket.gethostname()}, since "
    )
    assert "\n" not in str(refused.value)
    # Released: the next run gets it, and a clean run leaves no lock file behind.
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    with output_lock(layout, "flow run third", wait_seconds=0):
        assert (tmp_path / "out" / LOCK_NAME).exists()


def test_a_waiting_run_gets_the_lock_when_the_first_ends(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    first_holds = threading.Event()

    def first() -> None:
        with output_lock(layout, "flow run first"):
            first_holds.set()
            time.sleep(0.5)

    thread = threading.Thread(target=first)
    thread.start()
    first_holds.wait()
    with output_lock(layout, "flow run second", wait_seconds=10, poll_seconds=0.1) as owner:
        assert owner.run == "flow run second"
    thread.join()


def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    with lock_holder(layout.root) as holder:
        refused = rf"in use by flow run holder \(pid {holder.pid} on {socket.gethostname()}, since "
        with (
            pytest.raises(ConfigError, match=refused),
            output_lock(layout, "flow run second", wait_seconds=0),
        ):
            pass
    # Its lock file is still there, naming it, but the kernel has dropped the lock.
    assert (tmp_path / "out" / LOCK_NAME).exists()
    with output_lock(layout, "flow run after the crash", wait_seconds=0):
        pass


def test_an_output_under_a_file_cannot_be_used(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("not a folder")
    layout = OutputLayout(str(tmp_path / "file.txt" / "out"))
    with pytest.raises(ConfigError, match="cannot be used"), output_lock(layout, "flow run"):
        pass
