"""Where Prefect persists task results: under the run's own output root, local or S3.

Prefect wants result storage as a saved block, so each output root gets one, named by a hash of
the root: the same output always finds the same cached steps, from any machine.
"""

from __future__ import annotations

import hashlib

from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem

from batchline.storage import OutputLayout, filesystem_options


def result_storage_for(layout: OutputLayout) -> WritableFileSystem:
    """Save (idempotently) the storage block for ``layout`` and return it, saved.

    The saved block itself, not its slug: Prefect loads a slug again for every task, one API
    call each, and the first load imports every installed Prefect collection (Dask's alone
    takes half a second).
    """
    name = "batchline-results-" + hashlib.sha256(layout.root.encode()).hexdigest()[:16]
    basepath = layout.url("prefect")
    storage: WritableFileSystem
    if "://" in layout.root:
        storage = RemoteFileSystem(basepath=basepath, settings=filesystem_options(basepath))
    else:
        storage = LocalFileSystem(basepath=basepath)
    storage.save(name, overwrite=True)
    return storage


def forget_result(layout: OutputLayout, key: str) -> None:
    """Remove the task result recorded under ``key``: a lookup of that key then runs the task.

    Prefect keeps one record file per key under the storage's basepath and reads it on every
    lookup, so removing the file is all it takes.
    """
    path = layout.path("prefect", key)
    if layout.fs.exists(path):
        layout.fs.rm(path)
