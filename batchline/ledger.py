"""The submission ledger: the record of every paid batch, written around each create call.

An entry is written (with the custom_ids it holds) *before* the create call and gets its batch id
right after. A run that dies in between leaves an entry without a batch id, which tells the next
run to look for the batch the call may have made instead of paying for it again. Everything the
pipeline knows about a request's attempts is derived from this ledger and the collected results
(kept, derived, in batchline/request_index.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from batchline import schemas
from batchline.config import RunError
from batchline.retry import RequestState as RequestState  # re-exported: its old home
from batchline.storage import OutputLayout


class LedgerEntry(BaseModel):
    """One intended or created batch."""

    key: str = Field(description="Sortable name: intents list in the order they were made.")
    request_count: int = Field(ge=1)
    request_bytes: int = Field(ge=0)
    intent_at: datetime
    batch_id: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    adopted: bool = Field(False, description="Found after an ambiguous create, not returned by it.")
    rejected_batch_ids: list[str] = Field(
        default_factory=list,
        description="Batches adopted for this intent whose results answered other requests.",
    )


class Ledger:
    def __init__(self, layout: OutputLayout) -> None:
        self.layout = layout

    def entries(self) -> list[LedgerEntry]:
        """All entries, oldest intent first."""
        return [
            LedgerEntry.model_validate(self.layout.read_json("ledger", name))
            for name in self.layout.names("ledger", ".json")
        ]

    def uncollected(self) -> list[LedgerEntry]:
        """Entries whose batch was created and whose results are not collected yet: the batches
        still processing (or ended and not yet collected), which a run waits for."""
        return [
            e
            for e in self.entries()
            if e.batch_id and not self.layout.exists("collected", f"{e.batch_id}.parquet")
        ]

    def record_intent(self, requests: pa.Table) -> LedgerEntry:
        """Persist the intent to submit ``requests`` (custom_id, params_hash, request_bytes)."""
        now = datetime.now(UTC)
        digest = hashlib.sha256()
        for cid, ph in zip(
            requests.column("custom_id").to_pylist(),
            requests.column("params_hash").to_pylist(),
            strict=True,
        ):
            digest.update(f"{cid}\0{ph}\n".encode())
        entry = LedgerEntry(
            key=f"{now:%Y%m%dT%H%M%S%f}-{digest.hexdigest()[:12]}",
            request_count=requests.num_rows,
            request_bytes=int(pc.sum(requests.column("request_bytes")).as_py() or 0),
            intent_at=now,
        )
        # The id list first, the entry last: an entry on disk always has its ids.
        ids = requests.select(["custom_id", "params_hash"]).cast(schemas.LEDGER_REQUESTS)
        self.layout.write_table("ledger", f"{entry.key}.parquet", ids)
        self.layout.write_json("ledger", f"{entry.key}.json", entry.model_dump(mode="json"))
        return entry

    def record_batch(
        self,
        entry: LedgerEntry,
        batch_id: str,
        created_at: datetime,
        expires_at: datetime,
        adopted: bool,
    ) -> LedgerEntry:
        return self._update(
            entry, batch_id=batch_id, created_at=created_at, expires_at=expires_at, adopted=adopted
        )

    def reject_adoption(self, entry: LedgerEntry) -> LedgerEntry:
        """Undo the adoption of a batch that is not this intent's: its requests are ours again.

        The batch is remembered so it is never adopted again; the next submit looks for the
        batch the intent really made, or creates one.
        """
        assert entry.batch_id is not None and entry.adopted
        return self._update(
            entry,
            batch_id=None,
            created_at=None,
            expires_at=None,
            adopted=False,
            rejected_batch_ids=[*entry.rejected_batch_ids, entry.batch_id],
        )

    def _update(self, entry: LedgerEntry, **changes: Any) -> LedgerEntry:
        updated = entry.model_copy(update=changes)
        self.layout.write_json("ledger", f"{entry.key}.json", updated.model_dump(mode="json"))
        return updated

    def entry_for(self, batch_id: str) -> LedgerEntry:
        """The one entry that holds ``batch_id``; a RunError when none or several do."""
        holders = [e for e in self.entries() if e.batch_id == batch_id]
        if len(holders) != 1:
            keys = ", ".join(e.key for e in holders) or "none"
            raise RunError(
                f"batch {batch_id} is held by {len(holders)} ledger entries ({keys}) under "
                f"{self.layout.url('ledger')}, where exactly one should hold it"
            )
        return holders[0]

    def request_ids(self, entry: LedgerEntry) -> pa.Table:
        return self.layout.read_table("ledger", f"{entry.key}.parquet")

    def request_states(self) -> Mapping[str, RequestState]:
        """Attempts and latest outcome of every custom_id the ledger has seen, by custom_id.

        A custom_id whose params changed (a new template, say) starts again at zero attempts:
        the old results answered a different request. Served by the on-disk request index
        (batchline/request_index.py), brought up to date with this ledger first.
        """
        # Imported here: the index is derived from this module's ledger.
        from batchline.request_index import RequestStates, open_index

        return RequestStates(open_index(self.layout))
