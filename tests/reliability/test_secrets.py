"""A recognisable API key run through the CLI and the flow appears nowhere it could leak to."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pyarrow.parquet as pq
import pytest

from batchline.emulator import Emulator
from tests.support import cli_env, finish, run_cli, write_documents

CANARY = f"sk-ant-api03-canary-{uuid.uuid4().hex}"


def _readable_forms(path: Path) -> Iterator[bytes]:
    """A file's bytes, plus what hides text from a byte scan: Parquet values, base64 in JSON."""
    raw = path.read_bytes()
    yield raw
    if path.suffix == ".parquet":
        yield repr(pq.read_table(path).to_pylist()).encode()
        return
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    # Prefect's result files hold the pickled result base64-encoded.
    for value in _strings(document):
        try:
            yield base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError):
            continue


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _files_holding_the_key(*roots: Path) -> list[str]:
    needles = (CANARY.encode(), CANARY[-32:].encode())
    hits = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if any(n in form for form in _readable_forms(path) for n in needles):
                hits.append(str(path))
    return hits


async def _server_records(flow_run_id: UUID) -> str:
    """Parameters, logs, artifacts and blocks the server holds, as one text."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogWorker

    await APILogWorker.drain_all()  # type: ignore[misc]
    async with get_client() as client:
        runs = await client.read_flow_runs()
        logs = await client.read_logs()
        artifacts = await client.read_artifacts()
        blocks = await client.read_block_documents(include_secrets=False)
    assert flow_run_id in {run.id for run in runs}, "the run under test is on this server"
    return orjson.dumps(
        {
            "parameters": [run.parameters for run in runs],
            "logs": [log.message for log in logs],
            "artifacts": [a.model_dump(mode="json") for a in artifacts],
            "blocks": [b.model_dump(mode="json") for b in blocks],
        }
    ).decode()


def test_the_api_key_is_in_no_log_parameter_artifact_or_file(
    tmp_path: Path,
    corpus: tuple[Path, set[str]],
    emulator_factory: Callable[..., Emulator],
    prefect_api: str,
    prefect_server_home: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    from blocks.credentials import AnthropicCredentials
    from flows.pipeline import batch_pipeline

    # Expired requests make both runs go through the retry pass too.
    emulator = emulator_factory(seed=2, expire_rate=0.2)
    source, _ = corpus
    env = cli_env(emulator, tmp_path / "cli-home", prefect_api, api_key=CANARY)
    code, printed = finish(run_cli(source, tmp_path / "cli-out", env))
    assert code == 0, printed

    # The flow in this process, with the key in a credentials block and not in the environment.
    write_documents(tmp_path / "docs", 5)
    with (
        temporary_settings(updates={PREFECT_HOME: tmp_path / "flow-home"}),
        caplog.at_level(logging.DEBUG),
    ):
        AnthropicCredentials(api_key=CANARY, base_url=emulator.base_url).save(
            "test-credentials", overwrite=True
        )
        state = batch_pipeline(
            source=str(tmp_path / "docs"),
            output=str(tmp_path / "flow-out"),
            credentials_block="test-credentials",
            poll_interval=0.2,
            max_poll_interval=0.5,
            max_attempts=5,
            return_state=True,
        )
        assert state.is_completed(), state
        records = run_coro_as_sync(_server_records(state.state_details.flow_run_id))

    assert CANARY not in printed
    captured = capsys.readouterr()
    assert CANARY not in captured.out + captured.err + caplog.text
    assert "Finished in state Completed()" in records, "the runs' logs were read"
    assert CANARY[-32:] not in records
    assert emulator.stats()["requests_submitted"] > 25, "both runs reached the API"
    assert not _files_holding_the_key(
        tmp_path / "cli-out",
        tmp_path / "flow-out",
        tmp_path / "cli-home",
        tmp_path / "flow-home",
        prefect_server_home,
    )


def test_the_scan_finds_a_key_that_is_there(tmp_path: Path) -> None:
    """The scan above can fail: it sees the key in plain, Parquet and base64-in-JSON files."""
    import pyarrow as pa

    (tmp_path / "plain.log").write_text(f"key={CANARY}")
    pq.write_table(pa.table({"v": [CANARY] * 50}), tmp_path / "t.parquet", compression="zstd")
    encoded = base64.b64encode(b"pickle:" + CANARY.encode()).decode()
    (tmp_path / "result.json").write_bytes(orjson.dumps({"result": encoded}))
    (tmp_path / "clean.txt").write_text("nothing here")
    assert sorted(Path(p).name for p in _files_holding_the_key(tmp_path)) == [
        "plain.log",
        "result.json",
        "t.parquet",
    ]
