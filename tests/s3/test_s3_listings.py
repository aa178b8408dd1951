"""Two processes sharing an s3:// output: each sees what the other wrote since it last looked."""

from __future__ import annotations

import s3fs

from batchline.storage import OutputLayout
from tests.s3.conftest import BUCKET


def _layout_of_another_process(root: str) -> OutputLayout:
    """A layout on a filesystem instance of its own, as a Dask worker or a resumed run has."""
    s3fs.S3FileSystem.clear_instance_cache()
    return OutputLayout(root)


def test_a_layout_sees_files_another_wrote_after_it_listed_the_folder(
    s3: s3fs.S3FileSystem,
) -> None:
    root = f"s3://{BUCKET}/out"
    driver = _layout_of_another_process(root)
    worker = _layout_of_another_process(root)
    assert driver.fs is not worker.fs
    driver.write_json("ledger", "batch-1.json", {"batch_id": "1"})
    assert worker.names("ledger", ".json") == ["batch-1.json"]
    assert not worker.exists("collected", "batch-1.parquet")
    assert worker.names(None) == ["ledger"]

    driver.write_json("ledger", "batch-2.json", {"batch_id": "2"})
    driver.write_json("collected", "batch-1.parquet", {"rows": 1})
    driver.write_json("ledger", "batch-1.json", {"batch_id": "1", "ended": True})

    assert worker.names("ledger", ".json") == ["batch-1.json", "batch-2.json"]
    assert worker.exists("ledger", "batch-2.json")
    assert worker.exists("collected", "batch-1.parquet")
    assert worker.names(None) == ["collected", "ledger"]
    assert worker.sizes("ledger") == {
        "batch-1.json": len(s3.cat(f"{BUCKET}/out/ledger/batch-1.json")),
        "batch-2.json": len(s3.cat(f"{BUCKET}/out/ledger/batch-2.json")),
    }
