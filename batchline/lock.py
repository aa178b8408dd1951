"""One run per output root: a lock that a second run on the same output waits for, then refuses.

Two runs writing one output at once each trust a ledger the other is changing: a batch gets paid
twice, an intent adopts the other run's batch, and the output can fail every later rerun. So a run
holds ``OUT/.batchline-lock.json`` from before it claims the output until it ends. A second run
waits ``wait_seconds`` for it, then stops with a ConfigError naming the holder (host, pid, flow run,
since when). The file is hidden so that ``claim_output`` and ``OutputLayout.names`` skip it.

Local folder: ``fcntl.flock`` on the lock file. The kernel drops the lock when its holder dies, so
a run killed by SIGKILL or a power cut never leaves a stale lock; the file's content only names the
holder for the refusal. On NFS, flock works only as far as the server honours locks.

S3 prefix: there is no OS lock, so the lock is an object whose holder rewrites it every
``ttl_seconds / 4`` from a background thread (the heartbeat). A lock not rewritten for
``ttl_seconds`` is stale: its holder is dead, or cut off from S3 long enough that its run is
failing anyway, and it may be taken over. Every write is conditional: PutObject with
``If-None-Match: *`` to create, with ``If-Match: <etag>`` to heartbeat or take over, DeleteObject
with ``If-Match`` to release. botocore 1.43 knows these headers and s3fs 2026.9 passes them through
(``pipe_file(mode="create")`` and extra PutObject arguments); a failed condition is a 412, which
s3fs raises as FileExistsError or as OSError caused by the ClientError. Ages are measured on the
store's clock (the response's ``Date`` minus the object's ``LastModified``), so the machines' clocks
need not agree. What that gives:

- On a store that evaluates conditions atomically (AWS S3 since 2024), creation and takeover are
  compare-and-swap: of two runs that race, exactly one gets the lock, and a takeover replaces only
  the stale lock it read, never a fresh heartbeat.
- It is a lease, not a fence: a holder that stalls longer than the TTL (a suspended laptop, a long
  GC pause) can be taken over while it still runs; its next heartbeat then fails, and it logs an
  error naming the new holder, but it does not stop by itself.
- A store that ignores the conditional headers (some S3-compatible servers) gives no mutual
  exclusion, only the refusal when the lock is seen in place.
- moto 5.2.5's server, which the tests use, checks each condition and then writes in two steps
  without a lock (``moto/s3/responses.py: put_object``), so on it the lock is exact for runs that do
  not hit the same instant; the tests check the protocol, not S3's atomicity.

Both kinds are released when the ``with`` block ends, however it ends. A deployed run that suspends
leaves its flow function, so it releases the lock while its batches run and takes it again when
resumed; another run may use the output in between.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import orjson
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ValidationError

from batchline.config import ConfigError
from batchline.storage import OutputLayout

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
log = logging.getLogger(__name__)

LOCK_NAME = ".batchline-lock.json"


class Owner(BaseModel):
    """Who holds an output's lock, as written into the lock and named in a refusal."""

    host: str
    pid: int
    run: str
    since: datetime

    @classmethod
    def this_process(cls, run: str) -> Owner:
        """This process, running ``run`` (a flow run or a command), from now."""
        return cls(host=socket.gethostname(), pid=os.getpid(), run=run, since=datetime.now(UTC))

    def describe(self) -> str:
        """The one-line name of the holder that a refusal shows."""
        since = f"{self.since:%Y-%m-%d %H:%M:%S} UTC"
        return f"{self.run} (pid {self.pid} on {self.host}, since {since})"


class _Lock(Protocol):
    def try_acquire(self) -> str | None:
        """Take the lock and return None, or leave it and return a description of its holder."""

    def release(self) -> None: ...


@contextlib.contextmanager
def output_lock(
    layout: OutputLayout,
    run: str,
    *,
    wait_seconds: float = 10.0,
    poll_seconds: float = 1.0,
    ttl_seconds: float = 60.0,
    logger: Logger = log,
    busy: str = "wait for that run to end, or choose another output",
) -> Iterator[Owner]:
    """Hold the lock of ``layout``'s output root for the ``with`` block; yields its owner record.

    Waits up to ``wait_seconds`` for another run to let go, then raises ConfigError naming it.
    ``ttl_seconds`` is how long an S3 lock may go without a heartbeat before it counts as stale.
    ``logger`` tells the user about the wait and about S3 takeovers (the run's logger, say).
    ``busy`` ends the refusal: what to do about the holder.
    """
    owner = Owner.this_process(run)
    path = layout.path(None, LOCK_NAME)
    lock: _Lock
    if isinstance(layout.fs, LocalFileSystem):
        lock = _LocalLock(path, owner)
    else:
        lock = _S3Lock(layout.fs, path, owner, ttl_seconds, logger)
    deadline = time.monotonic() + wait_seconds
    try:
        holder = lock.try_acquire()
        if holder is not None:
            logger.info(
                "output %s is in use by %s: waiting up to %.0f s", layout.root, holder, wait_seconds
            )
        while holder is not None:
            if time.monotonic() >= deadline:
                raise ConfigError(f"output {layout.root} is in use by {holder}; {busy}")
            time.sleep(poll_seconds)
            holder = lock.try_acquire()
    except OSError as exc:
        raise ConfigError(f"output {layout.root} cannot be used: {exc}") from exc
    try:
        yield owner
    finally:
        lock.release()


def _describe(content: bytes) -> str:
    """The holder named by a lock's content, which may be mid-write or from an older version."""
    try:
        return Owner.model_validate_json(content).describe()
    except ValidationError:
        return "another run (it has not written its name yet)"


class _LocalLock:
    """``flock`` on a file; the file is removed on release, so a clean run leaves nothing."""

    def __init__(self, path: str, owner: Owner) -> None:
        self.path = path
        self.owner = owner
        self._fd: int | None = None

    def try_acquire(self) -> str | None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            # os.open's descriptor is not inherited across exec, so a process this run starts
            # (Prefect's temporary server) cannot keep the lock alive after the run dies.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(os.read(fd, 65536))
                os.close(fd)
                return holder
            # The holder we waited for unlinks the file before letting go: a lock on the file we
            # opened before that is a lock on nothing, so open the path again.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.owner.model_dump_json().encode(), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink before unlocking: the other order would let a waiter lock the unlinked file
        # while a newcomer creates and locks a new one. The file is gone if the whole output was
        # deleted during the run, and that run's own error says more than this one would.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


class _S3Lock:
    """An object rewritten by a heartbeat thread; every write conditional on what was read."""

    def __init__(
        self, fs: Any, path: str, owner: Owner, ttl_seconds: float, logger: Logger
    ) -> None:
        self.fs = fs
        self.path = path
        self.owner = owner
        self.ttl = timedelta(seconds=ttl_seconds)
        self.log = logger
        self._bucket, self._key, _ = fs.split_path(path)
        self._etag: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def try_acquire(self) -> str | None:
        # Each pass ends unless another run changed the lock since we looked, so it terminates.
        while True:
            if self._put(match=None):
                break
            current = self._read()
            if current is None:
                continue  # released meanwhile
            etag, age, content = current
            if age < self.ttl:
                return f"{_describe(content)}, last heartbeat {age.total_seconds():.0f} s ago"
            if self._put(match=etag):
                self.log.warning(
                    "took over the lock of %s from %s: no heartbeat for %.0f s",
                    self.path,
                    _describe(content),
                    age.total_seconds(),
                )
                break
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"lock-heartbeat {self.path}", daemon=True
        )
        self._heartbeat.start()
        return None

    def release(self) -> None:
        if self._heartbeat is None:
            return
        self._stop.set()
        self._heartbeat.join()
        self._heartbeat = None
        try:
            self.fs.call_s3("delete_object", Bucket=self._bucket, Key=self._key, IfMatch=self._etag)
        except OSError as exc:
            # Failing a finished run here would be worse than a lock that goes stale.
            if _lost_race(exc):
                self.log.warning("the lock %s was taken over before this run ended", self.path)
            else:
                self.log.warning(
                    "could not remove the lock %s (%s); the next run takes it over after %.0f s",
                    self.path,
                    exc,
                    self.ttl.total_seconds(),
                )

    def _put(self, match: str | None) -> bool:
        """Write our record if the lock is absent (``match`` None) or still has etag ``match``."""
        # The time makes every write's etag new: with the same bytes a heartbeat would keep the
        # etag, and a run that read the lock as stale could take it over from its live holder.
        body = orjson.dumps(
            {**self.owner.model_dump(mode="json"), "heartbeat_at": datetime.now(UTC).isoformat()}
        )
        condition = {"mode": "create"} if match is None else {"IfMatch": match}
        try:
            response = self.fs.pipe_file(self.path, body, **condition)
        except OSError as exc:
            if _lost_race(exc):
                return False
            raise
        self._etag = response["ETag"]
        return True

    def _read(self) -> tuple[str, timedelta, bytes] | None:
        """The lock's etag, its age on the store's clock and its content; None if it is gone."""
        try:
            head = self.fs.call_s3("head_object", Bucket=self._bucket, Key=self._key)
            content = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        return head["ETag"], now - head["LastModified"], content

    def _beat(self) -> None:
        interval = self.ttl.total_seconds() / 4
        while not self._stop.wait(interval):
            try:
                if not self._put(match=self._etag):
                    current = self._read()
                    holder = "nobody" if current is None else _describe(current[2])
                    self.log.error(
                        "lost the lock of %s to %s: this run and that one may both be writing "
                        "the output",
                        self.path,
                        holder,
                    )
                    return
            except OSError as exc:
                # The next beat may get through; only TTL without one makes the lock stale.
                self.log.warning("heartbeat of the lock %s failed: %s", self.path, exc)


def _lost_race(exc: OSError) -> bool:
    """Whether an S3 write failed because the lock changed: 412, 409 (a concurrent conditional
    write) or the object gone."""
    if isinstance(exc, FileExistsError | FileNotFoundError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") in {
        "PreconditionFailed",
        "ConditionalRequestConflict",
    }
