"""Local and S3 paths behind one interface, and the layout of everything a run writes.

Every path under the output root is built by ``OutputLayout.path`` so a newcomer can see the whole
tree in one place, and so part files are named by stable keys: a rerun overwrites its own files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, Literal, cast, get_args

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel

from batchline.config import ConfigError

Area = Literal["documents", "invalid", "manifest", "ledger", "collected", "results", "prefect"]
# At the output root: which source the output belongs to (see claim_output).
RUN_MARKER = "batchline-run.json"
# In a step's main area: what the step left behind and the inputs it was made from (see Stamp).
STAMP = ".stamp.json"


def filesystem_options(url: str) -> dict[str, Any]:
    """fsspec options for a URL; S3 credentials and endpoint come from the environment only."""
    if url.startswith("s3://"):
        # s3fs caches folder listings for the life of its instance, and fsspec shares one
        # instance per process: a Dask worker or a resumed run would never see the ledger
        # entries, collected files or source documents another process wrote since it first
        # listed a folder. Every ls/exists/find asks the store instead.
        options: dict[str, Any] = {"use_listings_cache": False}
        # botocore reads AWS_ENDPOINT_URL itself in recent versions; passing it explicitly keeps
        # older s3fs/botocore pairs pointed at the same endpoint (moto, MinIO, a VPC endpoint).
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        return options
    return {}


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem serving ``url`` and the path within it."""
    fs, path = fsspec.core.url_to_fs(url, **filesystem_options(url))
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URL or path segments with '/', the separator both local paths and S3 accept."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


class OutputLayout:
    """Where every file of a run lives under its output root (local folder or s3:// prefix)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") if "://" in root else os.path.abspath(root)
        self.fs, self._root_path = filesystem(self.root)

    def path(self, area: Area | None, name: str = "") -> str:
        """Filesystem path (no scheme) of ``name`` in ``area`` (None: the root); '' the folder."""
        return join(self._root_path, *[p for p in (area, name) if p])

    def url(self, area: Area | None, name: str = "") -> str:
        """Same as ``path`` but with the scheme, for users, logs and pandas."""
        return join(self.root, *[p for p in (area, name) if p])

    def exists(self, area: Area | None, name: str) -> bool:
        return bool(self.fs.exists(self.path(area, name)))

    def names(self, area: Area | None, suffix: str = "") -> list[str]:
        """Names (not paths) of the files in an area, sorted, optionally filtered by suffix."""
        return sorted(n for n in self.sizes(area) if n.endswith(suffix))

    def sizes(self, area: Area | None) -> dict[str, int]:
        """Name → size of every file in an area (hidden files, such as temporaries, left out)."""
        folder = self.path(area)
        if not self.fs.exists(folder):
            return {}
        sizes = {
            info["name"].rstrip("/").rsplit("/", 1)[-1]: int(info.get("size") or 0)
            for info in self.fs.ls(folder, detail=True)
        }
        return {n: size for n, size in sizes.items() if not n.startswith(".")}

    @contextmanager
    def atomic_open(self, area: Area | None, name: str) -> Iterator[IO[bytes]]:
        """Write a file so readers see the old content or the whole new one, never a part.

        Locally we write a temporary sibling and rename it. An S3 put is atomic, but a remote
        file object uploads what it has when closed, even after an error; so we spool to a local
        temporary file and upload it only once it is whole.
        """
        target = self.path(area, name)
        local = isinstance(self.fs, LocalFileSystem)
        if local:
            self.fs.makedirs(self.path(area), exist_ok=True)
        folder = self.path(area) if local else None
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            if local:
                os.replace(tmp, target)
            else:
                self.fs.put_file(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def write_json(self, area: Area | None, name: str, value: Any) -> None:
        with self.atomic_open(area, name) as handle:
            handle.write(orjson.dumps(value, option=orjson.OPT_INDENT_2))

    def read_json(self, area: Area | None, name: str) -> Any:
        with self.fs.open(self.path(area, name), "rb") as handle:
            return orjson.loads(handle.read())

    def write_table(self, area: Area, name: str, table: pa.Table) -> None:
        with self.atomic_open(area, name) as handle:
            pq.write_table(table, handle, compression="zstd")

    def read_table(self, area: Area, name: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.path(area, name), "rb") as handle:
            return pq.read_table(handle, columns=columns)


class Stamp(BaseModel):
    """What a step left under the output root, and a fingerprint of the inputs it came from.

    A step that finds its stamp matching its inputs and its files as it left them may return the
    recorded summary instead of redoing the work; anything else (other inputs, a deleted or
    replaced file) means the files on disk are not that step's answer, and it runs again. This is
    what keeps Prefect's cache honest: a cache key is only offered while the stamp holds.
    """

    inputs: str
    files: dict[str, dict[str, int]]
    summary: dict[str, Any]


def write_stamp(
    layout: OutputLayout, areas: tuple[Area, ...], inputs: str, summary: BaseModel
) -> None:
    """Record, in the first of ``areas``, that their files now answer ``inputs``."""
    stamp = Stamp(
        inputs=inputs,
        files={area: layout.sizes(area) for area in areas},
        summary=summary.model_dump(mode="json"),
    )
    layout.write_json(areas[0], STAMP, stamp.model_dump(mode="json"))


def stamped_summary(
    layout: OutputLayout, area: Area, inputs: str | None = None
) -> dict[str, Any] | None:
    """The summary a step recorded in ``area``, if its files are as it left them and (unless
    ``inputs`` is None) still answer ``inputs``."""
    if not layout.exists(area, STAMP):
        return None
    stamp = Stamp.model_validate(layout.read_json(area, STAMP))
    if inputs is not None and stamp.inputs != inputs:
        return None
    if any(layout.sizes(cast(Area, a)) != files for a, files in stamp.files.items()):
        return None
    return stamp.summary


def reuse_or_restamp(layout: OutputLayout, area: Area, inputs: str) -> dict[str, Any] | None:
    """The recorded summary if ``area`` still answers ``inputs``; else drop the stamp.

    Dropped before the step rewrites anything: a run killed halfway must not leave the old
    stamp beside files it has half replaced.
    """
    summary = stamped_summary(layout, area, inputs)
    if summary is None and layout.exists(area, STAMP):
        layout.fs.rm(layout.path(area, STAMP))
    return summary


def part_name(shard: int, piece: int = 0) -> str:
    """The file name of a shard's ``piece``-th part, the same on every run; sorts in order."""
    return f"part-{shard:05d}-{piece:05d}.parquet"


def remove_other_parts(layout: OutputLayout, area: Area, keep: set[str]) -> None:
    """Delete the parts of ``area`` not in ``keep``: left by an earlier, larger run."""
    for name in layout.names(area, ".parquet"):
        if name.startswith("part-") and name not in keep:
            layout.fs.rm(layout.path(area, name))


class RunMarker(BaseModel):
    """What ``batchline-run.json`` at an output root records."""

    source: str
    job_fingerprint: str
    claimed_at: datetime


def claim_output(layout: OutputLayout, source: str, job_fingerprint: str) -> None:
    """Check that ``layout`` is writable and free for ``source``, and record it as the owner.

    An output belongs to one source: a run of another source would mix two runs' ledgers and
    replace the first one's results, so it is refused (see ``release_output``), as is a non-empty
    folder that is not a batchline output. Raises ConfigError before anything is loaded or spent.
    """
    source = source.rstrip("/") if "://" in source else os.path.abspath(source)
    try:
        if layout.fs.exists(layout.path(None)) and not layout.fs.isdir(layout.path(None)):
            raise ConfigError(f"output {layout.root} is a file, not a folder")
        marker = None
        if layout.exists(None, RUN_MARKER):
            marker = RunMarker.model_validate(layout.read_json(None, RUN_MARKER))
        if marker is not None and marker.source != source:
            raise ConfigError(
                f"output {layout.root} holds the run of source {marker.source}, not {source}: "
                "choose another output, or reuse this one for the new source (its results will "
                f"be replaced) by deleting {layout.url(None, RUN_MARKER)} or passing --force"
            )
        if marker is None:
            ours = {*get_args(Area), RUN_MARKER}
            foreign = sorted(set(layout.names(None)) - ours)
            if foreign:
                raise ConfigError(
                    f"output {layout.root} is not empty and not a batchline output (it holds "
                    f"{', '.join(foreign[:5])}); choose a new or empty folder"
                )
        if marker is None or marker.job_fingerprint != job_fingerprint:
            claim = RunMarker(
                source=source, job_fingerprint=job_fingerprint, claimed_at=datetime.now(UTC)
            )
            layout.write_json(None, RUN_MARKER, claim.model_dump(mode="json"))
    except OSError as exc:
        raise ConfigError(f"output {layout.root} cannot be used: {exc}") from exc


def run_marker(layout: OutputLayout) -> RunMarker:
    """Which source ``layout`` belongs to; ConfigError when it holds no run."""
    if not layout.exists(None, RUN_MARKER):
        raise ConfigError(
            f"{layout.root} holds no batchline run (no {RUN_MARKER}); pass the --output of a run"
        )
    return RunMarker.model_validate(layout.read_json(None, RUN_MARKER))


def release_output(layout: OutputLayout) -> None:
    """Forget which source ``layout`` belongs to, so that another source may claim it."""
    if layout.exists(None, RUN_MARKER):
        layout.fs.rm(layout.path(None, RUN_MARKER))
