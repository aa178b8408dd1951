"""Load documents from a folder or a tabular file, local or on S3, in bounded shards.

A bad document (empty, binary, not UTF-8, too large, without an id, a duplicate id, a file that
cannot be read such as a dangling symlink) becomes a document with an ``invalid_reason`` instead
of an exception: one bad document never sinks a run.
A problem with a whole file (a CSV without the text column) is a ``ConfigError``, raised before
anything is submitted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel

from batchline import schemas
from batchline.config import ConfigError, SourceOptions
from batchline.failpoints import failpoint
from batchline.seen import SeenIds
from batchline.storage import (
    OutputLayout,
    filesystem,
    part_name,
    remove_other_parts,
    reuse_or_restamp,
    stamped_summary,
    write_stamp,
)
from batchline.wording import counted

log = logging.getLogger(__name__)

# Matched case-insensitively: .TXT and .JSONL files are documents too.
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
# How many of the files the loader does not read its warning names.
NAMED_UNREAD = 5
# Bytes of text documents fetched at once: many requests in flight, in bounded memory.
READ_AHEAD_BYTES = 64 << 20
DUPLICATE = "duplicate doc_id"


@dataclass(frozen=True)
class Document:
    """A document as read; ``invalid_reason`` set means it will not become a request."""

    doc_id: str
    text: str | None
    fields: dict[str, str] = field(default_factory=dict)
    invalid_reason: str | None = None


@dataclass(frozen=True)
class SourceEntry:
    """A file of the source with a readable suffix; ``problem`` says why it cannot be read.

    ``size`` and ``stored_hash`` (an object store's ETag, md5 or crc, with the size) are the
    listing's, when it has them: one listing answers for a whole prefix, not one request per object.
    """

    path: str
    rel: str
    problem: str | None = None
    size: int | None = None
    stored_hash: str | None = None


@dataclass(frozen=True)
class SourceListing:
    """What a source holds: the entries the loader reads and the names of the files it skips."""

    entries: list[SourceEntry]
    unread: list[str]


def scan_source(source: str) -> SourceListing:
    """Every file of a source: those with a document suffix, readable or not, and the others."""
    fs, root = _existing_source(source)
    if not fs.isdir(root):
        if not _has_suffix(root, TEXT_SUFFIXES + TABLE_SUFFIXES):
            raise ConfigError(
                f"source {source!r} is not a folder nor a {'/'.join(TABLE_SUFFIXES)} file"
            )
        return SourceListing([_entry(root, root.rsplit("/", 1)[-1], fs.info(root))], [])
    root = root.rstrip("/")
    entries: list[SourceEntry] = []
    unread: list[str] = []
    for path, info in sorted(fs.find(root, detail=True).items()):
        rel = path[len(root) + 1 :]
        hidden = rel.rsplit("/", 1)[-1].startswith(".")
        if hidden or not _has_suffix(path, TEXT_SUFFIXES + TABLE_SUFFIXES):
            unread.append(rel)
        else:
            entries.append(
                _entry(path, rel, info)
                if info.get("type") == "file"
                # A local listing does not follow symlinks: a link, a FIFO or a device
                # is "other", and what it points at is looked at on its own.
                else SourceEntry(path, rel, _unreadable(fs, path))
            )
    return SourceListing(entries, unread)


def _entry(path: str, rel: str, info: dict[str, Any]) -> SourceEntry:
    """The entry of a regular file, with what its listing says of its size and content."""
    stored = next((str(info[k]) for k in _STORE_HASHES if info.get(k)), None)
    size = info.get("size")
    return SourceEntry(
        path,
        rel,
        size=size if isinstance(size, int) else None,
        stored_hash=f"{size}:{stored}" if stored else None,
    )


def check_source_and_output(source: str, output: str) -> None:
    """Refuse, before the output is claimed, a source that does not exist or holds the output.

    An output inside its source would be read back as documents by the next run.
    """
    _existing_source(source)
    source_path, output_path = _comparable(source), _comparable(output)
    if output_path == source_path or output_path.startswith(source_path + "/"):
        raise ConfigError(
            f"output {output} is inside source {source}, so the next run would read it as "
            "documents; choose an output outside the source"
        )


def _existing_source(source: str) -> tuple[Any, str]:
    fs, root = filesystem(source)
    if not fs.exists(root):
        raise ConfigError(f"source {source!r} does not exist")
    return fs, root


def _comparable(location: str) -> str:
    """A location as a string that is a prefix of everything under it (symlinks resolved)."""
    if "://" in location:
        return location.rstrip("/")
    return os.path.realpath(location)


def _has_suffix(path: str, suffixes: tuple[str, ...]) -> bool:
    return path.lower().endswith(suffixes)


def _unreadable(fs: Any, path: str) -> str | None:
    """Why the entry at ``path`` cannot be read as a file (following symlinks), or None."""
    try:
        kind = fs.info(path).get("type")
    except OSError as exc:
        return _read_error(exc)
    if kind == "file":
        return None
    return "unreadable: a directory" if kind == "directory" else "unreadable: not a regular file"


def _read_error(exc: OSError) -> str:
    return f"unreadable: {exc.strerror or exc}"


def source_fingerprint(source: str, options: SourceOptions) -> str:
    """A hash of every source file's content and the reading options (cache key input).

    Content, not size and mtime: an edit that keeps both (``cp -p``, ``rsync -t``, a coarse
    clock) must still be seen. Object stores give a content hash (ETag, md5, crc) with the
    listing; local files are read and hashed.
    """
    return _fingerprint(source, scan_source(source), options)


def _fingerprint(source: str, listing: SourceListing, options: SourceOptions) -> str:
    fs, _ = filesystem(source)
    digest = hashlib.sha256(options.model_dump_json().encode())
    for entry in listing.entries:
        # An entry that cannot be read is an invalid row of the load step, not a failed run:
        # its reason stands in for its content.
        content = entry.problem or entry.stored_hash
        if content is None:
            try:
                content = _content_hash(fs, entry.path)
            except OSError as exc:
                content = _read_error(exc)
        digest.update(f"{entry.rel}\0{content}\n".encode())
    return digest.hexdigest()


# Local file hashes by (path, size, mtime, ctime, inode): any write changes the ctime, so a hit is
# the same bytes, and the cache key and the load step of one run read each file's bytes once.
_local_hashes: dict[tuple[str, int, int, int, int], str] = {}
_STORE_HASHES = ("ETag", "md5Hash", "crc32c", "content_md5")


def _content_hash(fs: Any, path: str) -> str:
    """A hash of a file's bytes, for files whose listing gives none (local ones, some stores)."""
    if isinstance(fs, LocalFileSystem):
        stat = os.stat(path)
        key = (path, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        if key not in _local_hashes:
            _local_hashes[key] = _hash_bytes(fs, path)
        return _local_hashes[key]
    return _hash_bytes(fs, path)


def _hash_bytes(fs: Any, path: str) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LoadShard:
    """Files of the source that one load task reads: at most a shard of them, in bounded bytes."""

    index: int
    entries: list[SourceEntry]


def plan_shards(source: str, options: SourceOptions) -> list[LoadShard]:
    """The source's readable files cut into load shards, in the order their documents keep."""
    return _shards(scan_source(source), options)


def _shards(listing: SourceListing, options: SourceOptions) -> list[LoadShard]:
    if listing.unread:
        log.warning(
            "%s not read (hidden, or not %s): %s%s",
            counted(len(listing.unread), "file"),
            "/".join(TEXT_SUFFIXES + TABLE_SUFFIXES),
            ", ".join(listing.unread[:NAMED_UNREAD]),
            ", ..." if len(listing.unread) > NAMED_UNREAD else "",
        )
    return [LoadShard(i, group) for i, group in enumerate(_read_groups(listing.entries, options))]


def iter_shards(source: str, options: SourceOptions) -> Iterator[list[Document]]:
    """Documents of a source in shards of ``options.shard_size``, duplicates marked invalid."""
    fs, _ = filesystem(source)
    with SeenIds() as seen:
        for shard in plan_shards(source, options):
            for piece in _pieces(shard_documents(fs, shard, options), options.shard_size):
                repeats = repeated_ids(
                    [d.doc_id if d.invalid_reason is None else None for d in piece], seen
                )
                yield [_as_duplicate(d) if r else d for d, r in zip(piece, repeats, strict=True)]


def repeated_ids(ids: Iterable[str | None], seen: SeenIds) -> list[bool]:
    """Which ``ids`` (None: not a valid document) were in ``seen`` or came before; adds the rest.

    The first document with an id wins, in source order, across every shard ``seen`` spans.
    """
    listed = list(ids)
    first = iter(seen.first_seen([doc_id for doc_id in listed if doc_id is not None]))
    return [doc_id is not None and not next(first) for doc_id in listed]


def _as_duplicate(doc: Document) -> Document:
    return Document(doc.doc_id, None, invalid_reason=DUPLICATE)


def _pieces(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    piece: list[Document] = []
    for doc in docs:
        piece.append(doc)
        if len(piece) >= size:
            yield piece
            piece = []
    if piece:
        yield piece


def shard_documents(fs: Any, shard: LoadShard, options: SourceOptions) -> Iterator[Document]:
    """The documents of one load shard's files, duplicates not yet marked."""
    texts = [e for e in shard.entries if e.problem is None and _has_suffix(e.path, TEXT_SUFFIXES)]
    heads = dict(zip(texts, _read_heads(fs, texts, options.max_document_bytes + 1), strict=True))
    for entry in shard.entries:
        yield from _entry_documents(fs, entry, heads.get(entry), options)


def _read_groups(entries: list[SourceEntry], options: SourceOptions) -> Iterator[list[SourceEntry]]:
    """Entries in order, cut where their text documents would hold a shard or READ_AHEAD_BYTES."""
    limit = options.max_document_bytes + 1
    group: list[SourceEntry] = []
    held = 0
    for entry in entries:
        group.append(entry)
        if _has_suffix(entry.path, TEXT_SUFFIXES):
            held += limit if entry.size is None else min(entry.size, limit)
        if len(group) >= options.shard_size or held >= READ_AHEAD_BYTES:
            yield group
            group, held = [], 0
    if group:
        yield group


def _read_heads(fs: Any, entries: list[SourceEntry], limit: int) -> list[bytes | Exception]:
    """The first ``limit`` bytes of each file, or why it could not be read, in one call.

    An object store's filesystem runs the ranged GETs concurrently (s3fs: up to its batch size
    in flight), where reading one file after another waits a round trip for each.
    """
    # An empty object gets no request: S3 refuses any range of it (416), and it holds nothing.
    wanted = [e.path for e in entries if e.size != 0]
    fetched = iter(fs.cat_ranges(wanted, 0, limit, on_error="return") if wanted else [])
    return [b"" if e.size == 0 else next(fetched) for e in entries]


def _entry_documents(
    fs: Any, entry: SourceEntry, head: bytes | Exception | None, options: SourceOptions
) -> Iterator[Document]:
    """The documents of one entry; ``head`` is a text file's fetched start (or its error)."""
    is_text = _has_suffix(entry.path, TEXT_SUFFIXES)
    # An unreadable text file is its document; an unreadable table, a row named by the file.
    doc_id = entry.rel.rsplit(".", 1)[0] if is_text else entry.rel
    if entry.problem is not None:
        yield Document(doc_id, None, invalid_reason=entry.problem)
        return
    try:
        if isinstance(head, Exception):
            raise head
        if head is not None:
            yield _text_document(doc_id, head, options)
        else:
            yield from _iter_table_rows(fs, entry.path, entry.rel, options)
    except OSError as exc:
        yield Document(doc_id, None, invalid_reason=_read_error(exc))


def _text_document(doc_id: str, raw: bytes, options: SourceOptions) -> Document:
    if len(raw) > options.max_document_bytes:
        return Document(
            doc_id,
            None,
            invalid_reason=f"over the size limit of {options.max_document_bytes} bytes",
        )
    nul = raw.find(b"\0")
    if nul >= 0:
        return Document(doc_id, None, invalid_reason=f"binary content (NUL byte at offset {nul})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Document(
            doc_id,
            None,
            invalid_reason=f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
        )
    return _checked(doc_id, text, {}, options)


def _checked(doc_id: str, text: str, fields: dict[str, str], options: SourceOptions) -> Document:
    if not text.strip():
        return Document(doc_id, None, fields, invalid_reason="empty document")
    size = len(text.encode("utf-8"))
    if size > options.max_document_bytes:
        return Document(
            doc_id,
            None,
            fields,
            invalid_reason=f"{size} bytes, over the limit of {options.max_document_bytes} bytes",
        )
    return Document(doc_id, text, fields)


def _iter_table_rows(fs: Any, path: str, rel: str, options: SourceOptions) -> Iterator[Document]:
    # rel#N names a row without an id: N is the line of a JSONL file (blank lines count, as in an
    # editor), the row of a CSV file after its header, the record of a Parquet file.
    for number, row in enumerate(_iter_raw_rows(fs, path, rel, options), start=1):
        if row is None:  # a blank JSONL line
            continue
        if isinstance(row, str):  # a line that did not parse
            yield Document(f"{rel}#{number}", None, invalid_reason=row)
            continue
        raw_id = row.get(options.id_column)
        if raw_id is None or str(raw_id).strip() == "":
            yield Document(
                f"{rel}#{number}",
                None,
                invalid_reason=f"no value in id column {options.id_column!r}",
            )
            continue
        doc_id = str(raw_id)
        text = row.get(options.text_column)
        fields = {
            str(k): _as_text(v)
            for k, v in row.items()
            if k not in (options.text_column,) and v is not None
        }
        if not isinstance(text, str):
            reason = (
                f"no value in text column {options.text_column!r}"
                if text is None
                else f"text column {options.text_column!r} holds {type(text).__name__}, not text"
            )
            yield Document(doc_id, None, fields, invalid_reason=reason)
            continue
        yield _checked(doc_id, text, fields, options)


def _iter_raw_rows(
    fs: Any, path: str, rel: str, options: SourceOptions
) -> Iterator[dict[str, Any] | str | None]:
    """Rows of a tabular file as dicts; a JSONL line that does not parse comes as its error,
    a blank one as None."""
    if _has_suffix(path, (".jsonl",)):
        with fs.open(path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    yield None
                    continue
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield f"line is not valid JSON: {exc}"
                    continue
                yield value if isinstance(value, dict) else "line is not a JSON object"
        return
    if _has_suffix(path, (".csv",)):
        # Imported where CSV needs it; a run imports pandas anyway, through pyarrow (pa.array
        # checks whether its input is a pandas object).
        import pandas as pd

        with fs.open(path, "rb") as handle:
            chunks = pd.read_csv(
                handle, dtype=str, keep_default_na=False, chunksize=options.shard_size
            )
            for chunk in chunks:
                _require_columns(rel, list(chunk.columns), options)
                yield from _records(chunk.to_dict(orient="records"))
        return
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        _require_columns(rel, parquet.schema_arrow.names, options)
        for batch in parquet.iter_batches(batch_size=options.shard_size):
            yield from _records(batch.to_pylist())


def _records(rows: Iterable[dict[Any, Any]]) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield {str(k): v for k, v in row.items()}


def _require_columns(rel: str, columns: list[str], options: SourceOptions) -> None:
    missing = [c for c in (options.id_column, options.text_column) if c not in columns]
    if missing:
        raise ConfigError(
            f"{rel}: no column {', '.join(repr(c) for c in missing)} (columns: "
            f"{', '.join(columns) or 'none'}); set --id-column/--text-column to the right names"
        )


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()


class LoadSummary(BaseModel):
    fingerprint: str
    shards: int
    documents: int
    invalid: int


@dataclass(frozen=True)
class LoadPlan:
    """What loading a source takes: its fingerprint, and its shards unless already staged."""

    fingerprint: str
    shards: list[LoadShard]
    staged: LoadSummary | None = None


class StagedShard(BaseModel):
    """The parts one load shard wrote, and what they hold."""

    parts: list[str]
    documents: int
    invalid: int


def plan_load(source: str, layout: OutputLayout, options: SourceOptions) -> LoadPlan:
    """The shards to read, or none when the staged parts already answer this source's content.

    A stale stamp is dropped here, before any shard rewrites a part.
    """
    listing = scan_source(source)
    fingerprint = _fingerprint(source, listing, options)
    if (staged := reuse_or_restamp(layout, "documents", fingerprint)) is not None:
        return LoadPlan(fingerprint, [], LoadSummary.model_validate(staged))
    return LoadPlan(fingerprint, _shards(listing, options))


def stage_shard(
    source: str, layout: OutputLayout, options: SourceOptions, shard: LoadShard
) -> StagedShard:
    """Read one shard's files into ``documents/part-SSSSS-PPPPP.parquet``, shard_size rows each.

    Runs anywhere the source and output are reachable (a Dask worker): it reads only its files.
    """
    fs, _ = filesystem(source)
    parts: list[str] = []
    documents = invalid = 0
    for piece in _pieces(shard_documents(fs, shard, options), options.shard_size):
        name = part_name(shard.index, len(parts))
        layout.write_table("documents", name, schemas.table(_rows(piece), schemas.DOCUMENTS))
        parts.append(name)
        documents += len(piece)
        invalid += sum(d.invalid_reason is not None for d in piece)
    return StagedShard(parts=parts, documents=documents, invalid=invalid)


def _rows(docs: list[Document]) -> list[dict[str, Any]]:
    return [
        {
            "doc_id": d.doc_id,
            "text": d.text,
            "fields_json": orjson.dumps(d.fields).decode() if d.fields else None,
            "invalid_reason": d.invalid_reason,
        }
        for d in docs
    ]


def finish_load(layout: OutputLayout, fingerprint: str, staged: list[StagedShard]) -> LoadSummary:
    """Mark ids repeated across shards, drop parts of earlier runs, and stamp the documents.

    Parts from an earlier, larger run of the same output are removed so they cannot resurface.
    When the stamp already answers ``fingerprint`` (the plan found nothing to read), its
    summary is the answer.
    """
    if (done := stamped_summary(layout, "documents", fingerprint)) is not None:
        return LoadSummary.model_validate(done)
    parts = [name for shard in staged for name in shard.parts]
    duplicates = _mark_duplicates(layout, parts)
    remove_other_parts(layout, "documents", set(parts))
    summary = LoadSummary(
        fingerprint=fingerprint,
        shards=len(parts),
        documents=sum(s.documents for s in staged),
        invalid=sum(s.invalid for s in staged) + duplicates,
    )
    write_stamp(layout, ("documents",), fingerprint, summary)
    failpoint("load.done")
    return summary


def _mark_duplicates(layout: OutputLayout, parts: list[str]) -> int:
    """Make every valid document whose id came earlier in ``parts`` invalid; how many there were.

    Reads only the id columns; rewrites only the parts that hold a repeat.
    """
    seen = SeenIds()
    marked = 0
    for name in parts:
        ids = layout.read_table("documents", name, columns=["doc_id", "invalid_reason"])
        repeats = repeated_ids(
            (
                doc_id if reason is None else None
                for doc_id, reason in zip(*(c.to_pylist() for c in ids.columns), strict=True)
            ),
            seen,
        )
        if not any(repeats):
            continue
        docs = [
            _as_duplicate(d) if r else d
            for d, r in zip(read_staged(layout, name), repeats, strict=True)
        ]
        layout.write_table("documents", name, schemas.table(_rows(docs), schemas.DOCUMENTS))
        marked += sum(repeats)
    return marked


def stage_documents(source: str, layout: OutputLayout, options: SourceOptions) -> LoadSummary:
    """Read the source once into ``documents/`` parts, shard after shard in this process.

    The flow runs the same steps as tasks, the shards mapped over its task runner's workers.
    """
    plan = plan_load(source, layout, options)
    staged = [stage_shard(source, layout, options, shard) for shard in plan.shards]
    return finish_load(layout, plan.fingerprint, staged)


def read_staged(layout: OutputLayout, name: str) -> list[Document]:
    """The documents of one staged part."""
    table = layout.read_table("documents", name)
    # Column by column: a dict per row (Table.to_pylist) is a fifth slower.
    columns = (
        table.column(c).to_pylist() for c in ("doc_id", "text", "fields_json", "invalid_reason")
    )
    return [
        Document(doc_id, text, orjson.loads(fields) if fields else {}, reason)
        for doc_id, text, fields, reason in zip(*columns, strict=True)
    ]
