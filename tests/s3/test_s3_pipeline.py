"""The whole flow with an s3:// source and an s3:// output, against moto's S3 over loopback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pandas as pd
import pytest
import s3fs

from batchline.emulator import Emulator
from batchline.status import output_status
from batchline.storage import OutputLayout
from batchline.write import RunSummary
from flows.pipeline import batch_pipeline
from tests.s3.conftest import AWS_SECRET, BUCKET
from tests.support import assert_complete_and_paid_once

pytestmark = pytest.mark.usefixtures("prefect_server")


def _upload_documents(fs: s3fs.S3FileSystem) -> set[str]:
    """A folder of .txt files and a .jsonl under s3://BUCKET/in/; returns the doc_ids."""
    ids = set()
    for i in range(6):
        fs.pipe(f"{BUCKET}/in/notes/note-{i}.txt", f"Note {i} about topic {i % 3}.".encode())
        ids.add(f"notes/note-{i}")
    rows = [{"id": f"row-{i}", "text": f"Row {i} of the table."} for i in range(4)]
    fs.pipe(f"{BUCKET}/in/rows.jsonl", b"\n".join(map(orjson.dumps, rows)))
    return ids | {r["id"] for r in rows}


def test_s3_source_and_output_run_end_to_end_and_rerun_pays_nothing(
    s3: s3fs.S3FileSystem,
    storage_options: dict[str, Any],
    emulator_factory: Callable[..., Emulator],
    api_env: Callable[[Emulator], None],
) -> None:
    emulator = emulator_factory(seed=4, expire_rate=0.25)
    api_env(emulator)
    doc_ids = _upload_documents(s3)
    output = f"s3://{BUCKET}/out/run-1"
    params = {"poll_interval": 0.1, "max_poll_interval": 0.5, "max_attempts": 6}

    summary = batch_pipeline(source=f"s3://{BUCKET}/in", output=output, **params)

    assert isinstance(summary, RunSummary)
    assert summary.output == f"{output}/results"
    table = pd.read_parquet(summary.output, storage_options=storage_options)
    assert_complete_and_paid_once(table, emulator, doc_ids)
    assert set(table.status) == {"succeeded"}
    assert (table.attempts > 1).any(), "expired requests were retried from the S3 ledger"
    assert s3.exists(f"{BUCKET}/out/run-1/batchline-run.json")
    assert s3.ls(f"{BUCKET}/out/run-1/prefect"), "Prefect's task results persist on S3 too"

    submitted = emulator.stats()["requests_submitted"]
    state = output_status(OutputLayout(output))
    assert state.requests_submitted == submitted > len(doc_ids)
    assert state.answers == {"succeeded": len(doc_ids), "expired": submitted - len(doc_ids)}
    assert state.processing == [] and state.results == summary
    assert state.spent_usd == pytest.approx(summary.cost_usd)
    again = batch_pipeline(source=f"s3://{BUCKET}/in", output=output, **params)
    assert again == summary
    assert emulator.stats()["requests_submitted"] == submitted


def test_s3_credentials_stay_out_of_parameters_and_blocks(
    s3: s3fs.S3FileSystem,
    emulator_factory: Callable[..., Emulator],
    api_env: Callable[[Emulator], None],
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    api_env(emulator_factory())
    _upload_documents(s3)
    state = batch_pipeline(
        source=f"s3://{BUCKET}/in",
        output=f"s3://{BUCKET}/out/run-2",
        poll_interval=0.1,
        max_poll_interval=0.5,
        return_state=True,
    )
    assert state.is_completed(), state

    async def saved() -> str:
        async with get_client() as client:
            run = await client.read_flow_run(state.state_details.flow_run_id)
            blocks = await client.read_block_documents(include_secrets=True)
        return orjson.dumps(
            {"parameters": run.parameters, "blocks": [b.data for b in blocks]}, default=str
        ).decode()

    records = run_coro_as_sync(saved())
    assert f"s3://{BUCKET}/out/run-2" in records  # the output's storage block is there
    assert AWS_SECRET not in records
    assert "fake-aws-key-id" not in records
    for path in s3.find(f"{BUCKET}/out/run-2"):
        assert AWS_SECRET.encode() not in s3.cat(path)
