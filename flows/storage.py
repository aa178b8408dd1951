"""Where Prefect persists task results: under the run's own output root, local or S3.

Prefect wants result storage as a saved block, so each output root gets one, named by a hash of
the root: the same output always finds the same cached steps, from any machine.
"""

from __future__ import annotations

import hashlib

from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from batchline.storage import OutputLayout, filesystem_options


def result_storage_for(layout: OutputLayout) -> str:
    """Save (idempotently) the storage block for ``layout`` and return its slug."""
    name = "batchline-results-" + hashlib.sha256(layout.root.encode()).hexdigest()[:16]
    basepath = layout.url("prefect")
    if "://" in layout.root:
        RemoteFileSystem(basepath=basepath, settings=filesystem_options(basepath)).save(
            name, overwrite=True
        )
        return f"remote-file-system/{name}"
    LocalFileSystem(basepath=basepath).save(name, overwrite=True)
    return f"local-file-system/{name}"


def forget_result(layout: OutputLayout, key: str) -> None:
    """Remove the task result recorded under ``key``: a lookup of that key then runs the task.

    Prefect keeps one record file per key under the storage's basepath and reads it on every
    lookup, so removing the file is all it takes.
    """
    path = layout.path("prefect", key)
    if layout.fs.exists(path):
        layout.fs.rm(path)
