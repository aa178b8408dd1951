"""Loading an s3:// prefix of small objects: fetched many at a time, bad ones as invalid rows."""

from __future__ import annotations

import s3fs

from batchline.config import SourceOptions
from batchline.load import iter_shards, source_fingerprint
from tests.s3.conftest import BUCKET


def test_a_prefix_of_small_objects_loads_in_order_with_bad_objects_as_invalid_rows(
    s3: s3fs.S3FileSystem,
) -> None:
    for i in range(7):
        s3.pipe(f"{BUCKET}/in/note-{i}.txt", f"note {i}".encode())
    s3.pipe(f"{BUCKET}/in/empty.txt", b"")
    s3.pipe(f"{BUCKET}/in/big.txt", b"x" * 101)
    s3.pipe(f"{BUCKET}/in/latin1.txt", "caf\xe9".encode("latin-1"))
    s3.pipe(f"{BUCKET}/in/rows.jsonl", b'{"id": "row", "text": "from jsonl"}\n')
    # An archived object is listed like any other, but S3 refuses to GET it.
    s3.pipe(f"{BUCKET}/in/archived.txt", b"cold", StorageClass="GLACIER")
    options = SourceOptions(shard_size=3, max_document_bytes=100)

    shards = list(iter_shards(f"s3://{BUCKET}/in", options))

    docs = [(d.doc_id, d.text, d.invalid_reason) for shard in shards for d in shard]
    assert [len(s) for s in shards] == [3, 3, 3, 3]
    assert docs == [
        ("archived", None, "unreadable: The operation is not valid for the object's storage class"),
        ("big", None, "over the size limit of 100 bytes"),
        ("empty", None, "empty document"),
        ("latin1", None, "not valid UTF-8 (byte 0xe9 at offset 3)"),
        *((f"note-{i}", f"note {i}", None) for i in range(7)),
        ("row", "from jsonl", None),
    ]


def test_the_fingerprint_of_a_prefix_follows_its_objects_content(s3: s3fs.S3FileSystem) -> None:
    s3.pipe(f"{BUCKET}/in/a.txt", b"alpha")
    s3.pipe(f"{BUCKET}/in/archived.txt", b"cold", StorageClass="GLACIER")
    source, options = f"s3://{BUCKET}/in", SourceOptions()
    before = source_fingerprint(source, options)
    assert source_fingerprint(source, options) == before
    s3.pipe(f"{BUCKET}/in/a.txt", b"gamma")  # same size, other bytes
    assert source_fingerprint(source, options) != before
