"""The output lock on an s3:// prefix, against moto's S3 server: a heartbeat keeps it, a lock whose
heartbeat stopped is taken over, and a holder that lost its lock says so and leaves the new one."""

from __future__ import annotations

import logging
import os
import re
import socket
import time

import pytest
import s3fs

from batchline.config import ConfigError
from batchline.lock import LOCK_NAME, Owner, output_lock
from batchline.storage import OutputLayout
from tests.s3.conftest import BUCKET
from tests.support import lock_holder

OUTPUT = f"s3://{BUCKET}/out"
# Short, so that the tests see a lock go stale; the heartbeat runs every TTL / 4.
TTL = 3.0


def test_a_second_run_is_refused_naming_the_first(s3: s3fs.S3FileSystem) -> None:
    layout = OutputLayout(OUTPUT)
    with output_lock(layout, "flow run first (id-1)"):
        assert s3.exists(f"{BUCKET}/out/{LOCK_NAME}")
        with (
            pytest.raises(ConfigError) as refused,
            output_lock(layout, "flow run second", wait_seconds=0.5, poll_seconds=0.1),
        ):
            pytest.fail("the second run got the lock")
    assert str(refused.value).startswith(
        f"output {OUTPUT} is in use by flow run first (id-1) "
        f"(pid {os.getpid()} on {socket.gethostname()}, since "
    )
    assert re.search(r"\), last heartbeat \d s ago; ", str(refused.value))
    # Released: the object is gone and the next run gets the lock at once.
    assert not s3.exists(f"{BUCKET}/out/{LOCK_NAME}")
    with output_lock(layout, "flow run third", wait_seconds=0):
        pass


def test_a_live_heartbeat_keeps_the_lock_past_its_ttl(s3: s3fs.S3FileSystem) -> None:
    layout = OutputLayout(OUTPUT)
    with (
        lock_holder(OUTPUT, ttl_seconds=TTL) as holder,
        pytest.raises(ConfigError, match=rf"in use by flow run holder \(pid {holder.pid} "),
        output_lock(layout, "flow run second", wait_seconds=2 * TTL, ttl_seconds=TTL),
    ):
        pass


def test_a_stale_heartbeat_is_taken_over(
    s3: s3fs.S3FileSystem, caplog: pytest.LogCaptureFixture
) -> None:
    layout = OutputLayout(OUTPUT)
    with lock_holder(OUTPUT, ttl_seconds=TTL) as holder:
        pass  # killed here, holding the lock
    assert s3.exists(f"{BUCKET}/out/{LOCK_NAME}"), "a killed run leaves its lock object"

    with (
        caplog.at_level(logging.INFO, logger="batchline.lock"),
        output_lock(layout, "flow run after the crash", wait_seconds=4 * TTL, ttl_seconds=TTL),
        pytest.raises(ConfigError, match="in use by flow run after the crash"),
        output_lock(layout, "flow run third", wait_seconds=0, ttl_seconds=TTL),
    ):
        pass
    assert f"in use by flow run holder (pid {holder.pid} " in caplog.text, "it waited first"
    assert f"took over the lock of {BUCKET}/out/{LOCK_NAME} from flow run holder" in caplog.text


def test_a_holder_whose_lock_was_taken_over_says_so_and_leaves_the_new_lock(
    s3: s3fs.S3FileSystem, caplog: pytest.LogCaptureFixture
) -> None:
    layout = OutputLayout(OUTPUT)
    lock_object = f"{BUCKET}/out/{LOCK_NAME}"
    with (
        caplog.at_level(logging.WARNING, logger="batchline.lock"),
        output_lock(layout, "flow run stalled", ttl_seconds=TTL),
    ):
        # What a run that found this holder stale leaves: its own record in the lock.
        s3.pipe(lock_object, Owner.this_process("flow run usurper").model_dump_json().encode())
        time.sleep(TTL / 2)  # at least one heartbeat (every TTL / 4)
    assert f"lost the lock of {lock_object} to flow run usurper (pid " in caplog.text
    assert f"the lock {lock_object} was taken over before this run ended" in caplog.text
    assert Owner.model_validate_json(s3.cat(lock_object)).run == "flow run usurper"
