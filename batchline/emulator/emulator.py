"""The emulator as a start/stop object: a store, a processor and an HTTP server on a thread."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from types import TracebackType
from typing import Any

from batchline.emulator.api import BatchesApi
from batchline.emulator.config import EmulatorConfig
from batchline.emulator.processor import Processor
from batchline.emulator.server import EmulatorHTTPServer
from batchline.emulator.store import Store


class Emulator:
    """A Message Batches API on a local port, for the official SDK to talk to via `base_url`.

    Stopping closes the socket and the database; starting again (same object, or a new one on
    the same `db_path`) finds every batch that was there, and reuses the port the first start
    picked.
    """

    def __init__(self, config: EmulatorConfig | None = None, *, port: int = 0) -> None:
        self.config = config or EmulatorConfig()
        self._port = port
        self._db_path = self.config.db_path
        if self._db_path is None:
            # A private file rather than :memory:, so that a 256 MB batch lives on disk, not in
            # the process, and so that stop/start keeps the state like a real file would.
            directory = tempfile.mkdtemp(prefix="batchline-emulator-")
            weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
            self._db_path = os.path.join(directory, "state.sqlite")
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._processor: Processor | None = None
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the emulator is serving."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The port served on (known once started)."""
        return self._port

    @property
    def base_url(self) -> str:
        """URL to give the SDK as `base_url`, e.g. http://127.0.0.1:8123."""
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        host = self.config.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    def start(self) -> None:
        """Open the database, start processing and serve in a background thread."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the emulator is already running")
            assert self._db_path is not None
            store = Store(self._db_path)
            processor = Processor(store, self.config)
            api = BatchesApi(store, processor, self.config)
            try:
                server = EmulatorHTTPServer((self.config.host, self._port), api)
            except OSError:
                store.close()
                raise
            self._port = server.server_address[1]
            self._store, self._processor, self._server = store, processor, server
            api.base_url = self.base_url
            processor.start()
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"emulator-http-{self._port}",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop serving, close client connections, the socket and the database."""
        with self._lock:
            server, thread = self._server, self._thread
            processor, store = self._processor, self._store
            if server is None or thread is None or processor is None or store is None:
                return
            server.shutdown()
            thread.join()
            server.server_close()
            server.disconnect()
            processor.stop()
            store.close()
            self._server = self._thread = self._processor = self._store = None

    def stats(self, *, per_custom_id: bool = True) -> dict[str, Any]:
        """The counters that GET /_emulator/stats reports."""
        if self._store is None:
            raise RuntimeError("the emulator is not running")
        return self._store.stats(per_custom_id=per_custom_id)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
