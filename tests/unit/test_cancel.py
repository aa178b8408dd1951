"""cancel_processing against the emulator: the ledger's uncollected batches, ended ones left be."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anthropic
import pyarrow as pa

from batchline.cancel import cancel_processing
from batchline.emulator import Emulator
from batchline.ledger import Ledger
from batchline.storage import OutputLayout
from deployments.local import wait_for
from tests.support import collect_answers, hello_params


def _recorded(layout: OutputLayout, client: anthropic.Anthropic, custom_id: str) -> str:
    """A batch of one request created at the API, and the ledger's entry for it."""
    batch = client.messages.batches.create(
        requests=[{"custom_id": custom_id, "params": hello_params()}]
    )
    ledger = Ledger(layout)
    requests = pa.table({"custom_id": [custom_id], "params_hash": ["h"], "request_bytes": [10]})
    now = datetime.now(UTC)
    ledger.record_batch(ledger.record_intent(requests), batch.id, now, now, adopted=False)
    return batch.id


def test_only_uncollected_batches_are_cancelled_and_an_ended_one_is_reported_as_ended(
    tmp_path: Path, emulator_factory: Callable[..., Emulator]
) -> None:
    emulator = emulator_factory(processing_seconds=0.2)
    client = anthropic.Anthropic(api_key="test-key", base_url=emulator.base_url)
    layout = OutputLayout(str(tmp_path / "out"))
    collected = _recorded(layout, client, "a")
    ended = _recorded(layout, client, "b")
    wait_for(
        lambda: all(
            client.messages.batches.retrieve(b).processing_status == "ended"
            for b in (collected, ended)
        ),
        30,
        "both batches to end",
    )
    collect_answers(layout, collected, {"a": "succeeded"})
    connected: list[bool] = []

    def connect() -> anthropic.Anthropic:
        connected.append(True)
        return client

    [result] = cancel_processing(connect, layout)

    assert (result.batch_id, result.request_count, result.processing_status) == (ended, 1, "ended")
    assert client.messages.batches.retrieve(ended).request_counts.succeeded == 1
    collect_answers(layout, ended, {"b": "succeeded"})
    assert cancel_processing(connect, layout) == [] and connected == [True]
