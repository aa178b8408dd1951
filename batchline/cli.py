"""The `batchline` command: run the pipeline, run the demo, a local Prefect server, the emulator.

This is the console surface, so it is the one place that prints. Prefect is imported lazily, only
by the commands that run a flow, so `batchline emulator` and `--help` start fast, and only after
`batchline.prefect_server` has chosen the Prefect API the run uses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from batchline import prefect_server
from batchline.config import DEFAULT_MODEL
from batchline.prefect_server import PrefectApi, ServerError

if TYPE_CHECKING:
    from batchline.build import BuildSummary
    from batchline.write import RunSummary
    from flows.interrupt import CtrlC

console = Console()

DEMO_OUTPUT = "batchline-demo-out"
STRUCTURED_DEMO_OUTPUT = "batchline-demo-structured-out"


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["emulator"]:
        from batchline.emulator.cli import main as emulator_main

        return emulator_main(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command not in ("run", "demo"):
        return int(args.handler(args))
    try:
        with prefect_api(demo=args.command == "demo"):
            return int(args.handler(args))
    except ServerError as exc:
        console.print(f"[bold red]batchline: {exc}[/]")
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchline", description="Bulk LLM work through Anthropic's Message Batches API."
    )
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run the pipeline over a folder or file of documents")
    run.add_argument("source", help="folder of .txt/.md, or .jsonl/.csv/.parquet; local or s3://")
    run.add_argument("--output", required=True, help="output root, local or s3://")
    _add_job_arguments(run)
    run.add_argument("--dry-run", action="store_true", help="build and price, submit nothing")
    run.add_argument(
        "--force",
        action="store_true",
        help="reuse an output that belongs to another source (its results are replaced)",
    )
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo", help="run the pipeline on bundled documents against the bundled emulator"
    )
    demo.add_argument(
        "--output",
        default=None,
        help=f"output root (default {DEMO_OUTPUT}, or {STRUCTURED_DEMO_OUTPUT} with --structured)",
    )
    demo.add_argument(
        "--structured",
        action="store_true",
        help="classify bundled support tickets into typed columns (structured outputs)",
    )
    demo.set_defaults(handler=_demo)

    server = commands.add_parser(
        "server", help="a local Prefect server with its UI, used by runs while it is up"
    )
    server.add_argument("action", choices=["start", "stop", "status"])
    server.add_argument(
        "--port", type=int, default=prefect_server.DEFAULT_PORT, help="for start: UI and API port"
    )
    server.set_defaults(handler=_server)

    commands.add_parser("emulator", help="serve the Message Batches API emulator (see --help)")
    return parser


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument(
        "--template", default="{text}", help="user message, e.g. 'Summarize: {text}'"
    )
    parser.add_argument("--system", default=None, help="system prompt (sent with cache_control)")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument(
        "--output-schema",
        default=None,
        metavar="FILE.json",
        help="JSON Schema every reply must match; its fields become typed columns",
    )
    parser.add_argument(
        "--output-model",
        default=None,
        metavar="package.module:Model",
        help="a Pydantic model giving that schema, instead of --output-schema",
    )
    parser.add_argument(
        "--retry-invalid-output",
        action="store_true",
        help="resubmit replies that did not parse or match the schema (they are paid for)",
    )
    parser.add_argument("--poll-interval", type=float, default=10.0, help="first poll wait, s")
    parser.add_argument("--max-poll-interval", type=float, default=300.0)
    parser.add_argument("--max-cost-usd", type=float, default=None)
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--text-column", default="text")
    for name, field in (
        ("model", "model"),
        ("max-tokens", "max_tokens"),
        ("system", "system"),
        ("temperature", "temperature"),
    ):
        parser.add_argument(
            f"--{name}-column",
            default=field,
            help=f"column of tabular sources overriding a row's {field} (default {field})",
        )
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument(
        "--batch-size", type=int, default=100_000, help="requests per batch, at most 100,000"
    )
    parser.add_argument(
        "--max-batches-in-flight",
        type=int,
        default=2,
        help="batches submitted but not yet collected (the API queues 100k-500k requests by tier)",
    )
    parser.add_argument(
        "--credentials-block", default=None, help="saved AnthropicCredentials block name"
    )


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from batchline.config import ConfigError, RunError
    from batchline.console import one_line, quiet_refusals
    from batchline.storage import OutputLayout, release_output
    from flows.interrupt import CtrlC, on_ctrl_c
    from flows.pipeline import batch_pipeline

    ctrl_c = CtrlC()
    try:
        if args.force:
            release_output(OutputLayout(args.output))
        with on_ctrl_c(ctrl_c), live_status(), quiet_refusals():
            result = batch_pipeline(
                source=args.source,
                output=args.output,
                model=args.model,
                max_tokens=args.max_tokens,
                template=args.template,
                system=args.system,
                output_schema=args.output_schema,
                output_model=args.output_model,
                retry_invalid_output=args.retry_invalid_output,
                max_attempts=args.max_attempts,
                poll_interval=args.poll_interval,
                max_poll_interval=args.max_poll_interval,
                max_cost_usd=args.max_cost_usd,
                dry_run=args.dry_run,
                id_column=args.id_column,
                text_column=args.text_column,
                model_column=args.model_column,
                max_tokens_column=args.max_tokens_column,
                system_column=args.system_column,
                temperature_column=args.temperature_column,
                shard_size=args.shard_size,
                batch_size=args.batch_size,
                max_batches_in_flight=args.max_batches_in_flight,
                credentials_block=args.credentials_block,
            )
    except (ConfigError, ValidationError) as exc:
        console.print(f"[bold red]batchline: {escape(one_line(exc))}[/]")
        return 2
    except RunError as exc:
        console.print(f"[bold red]batchline: the run stopped: {exc}[/]")
        return 1
    except KeyboardInterrupt:
        return _interrupted(args.output, ctrl_c)
    _print_result(result)
    return 0


def _interrupted(output: str, ctrl_c: CtrlC) -> int:
    """After Ctrl-C: the flow run Cancelled, and one line on what is in flight and what to do."""
    from batchline.storage import OutputLayout
    from flows.interrupt import INTERRUPTED_EXIT, mark_cancelled
    from flows.progress import outstanding_batch_ids

    in_flight = outstanding_batch_ids(OutputLayout(output))
    message = "stopped by Ctrl-C; " + (
        f"still processing at the API: {', '.join(in_flight)}"
        if in_flight
        else "no batch in flight"
    )
    message += "; run the same command again to resume"
    if ctrl_c.flow_run_id is not None:
        try:
            mark_cancelled(ctrl_c.flow_run_id, message)
        except Exception as exc:  # the line below matters more than the run's state in the UI
            message += f" (flow run {ctrl_c.flow_run_id} could not be marked Cancelled: {exc})"
    console.print(f"[bold yellow]batchline: {message}[/]")
    return INTERRUPTED_EXIT


class _StatusLine(logging.Handler):
    """Prints each run log line above a live status line that shows the step's latest news."""

    def __init__(self, status: Status) -> None:
        super().__init__(logging.INFO)
        self.status = status

    def emit(self, record: logging.LogRecord) -> None:
        step = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", "")
        message = escape(record.getMessage())
        when = datetime.fromtimestamp(record.created)
        self.status.console.print(f"[dim]{when:%H:%M:%S}[/] [bold]{step}[/] {message}")
        self.status.update(f"[bold]{step}[/] {message}"[:160])


@contextmanager
def live_status() -> Iterator[None]:
    """On a terminal, the run's log lines with a live status line under them.

    Prefect's own console handler would write around the status line, so while it shows, that
    handler keeps only warnings and this one prints the rest. Piped or in CI nothing changes:
    Prefect's plain log lines.
    """
    terminal = Console(stderr=True)
    if not terminal.is_terminal:
        yield
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    prefect_console = [
        h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)
    ]
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [h.level for h in prefect_console]
    with terminal.status("starting the flow run", spinner="dots") as status:
        handler = _StatusLine(status)
        for logger in loggers:
            logger.addHandler(handler)
        for console_handler in prefect_console:
            console_handler.setLevel(max(console_handler.level, logging.WARNING))
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
            for console_handler, level in zip(prefect_console, levels, strict=True):
                console_handler.setLevel(level)


def _demo(args: argparse.Namespace) -> int:
    from batchline.emulator import Emulator, EmulatorConfig

    # Faults on, so the demo shows retries of overloaded and expired requests at work (and, with
    # --structured, of replies that are not the JSON asked for).
    config = EmulatorConfig(
        processing_seconds=1.0,
        seed=11,
        error_rates={"overloaded_error": 0.1},
        expire_rate=0.05,
        output_fault_rates={"truncated": 0.1, "mismatched": 0.1},
    )
    output = args.output or (STRUCTURED_DEMO_OUTPUT if args.structured else DEMO_OUTPUT)
    if args.structured:
        source = str(resources.files("batchline").joinpath("data/support-tickets"))
        job = [
            "--template",
            "Classify this support ticket by category, sentiment and urgency:\n\n{text}",
            "--output-schema",
            str(resources.files("batchline").joinpath("data/ticket-schema.json")),
            "--retry-invalid-output",
        ]
    else:
        source = demo_documents()
        job = ["--template", "Summarize in one sentence: {text}", "--system", demo_system_prompt()]
    with Emulator(config) as emulator:
        # The demo never talks to the real API: the emulator's URL and a throwaway key are set
        # for this process only.
        os.environ["ANTHROPIC_BASE_URL"] = emulator.base_url
        os.environ["ANTHROPIC_API_KEY"] = "demo-key-for-the-local-emulator"
        console.print(f"emulator at {emulator.base_url}; documents: {source}")
        run = ["run", source, "--output", output, *job]
        code = _run(
            _parser().parse_args([*run, "--poll-interval", "0.5", "--max-poll-interval", "2"])
        )
        if code == 0 and args.structured:
            _print_typed_columns(output)
        return code


@contextmanager
def prefect_api(demo: bool = False) -> Iterator[PrefectApi]:
    """The Prefect API of a run, chosen before Prefect is imported (batchline/prefect_server.py).

    With the local server up the run's UI address is printed when the run starts and ends.
    """
    api = prefect_server.choose_api()
    if api.prepares_database:
        _say_preparing(api.home)
    watch = prefect_server.FlowRunWatch(lambda run_id: _print_run_page(api, run_id))
    with prefect_server.using(api) as ready:
        import flows.pipeline  # noqa: F401  (Prefect's import overlaps its server's start)

        try:
            ready()
        except (RuntimeError, TimeoutError) as exc:
            log = api.home / prefect_server.RUN_SERVER_LOG
            raise ServerError(f"Prefect's server did not start ({exc}); its log: {log}") from exc
        # After the import: Prefect's logging set-up replaces the handlers of its loggers.
        with watch.watching():
            try:
                yield api
            finally:
                _flush_to_server()
                if watch.flow_run_id is not None:
                    _print_run_page(api, watch.flow_run_id)
    if demo and api.kind == "run":
        console.print(
            "To look at this run in Prefect's UI (graph, cached steps, artifacts): "
            "batchline server start, then open the URL it prints and pick the latest run."
        )


def _say_preparing(home: Path) -> None:
    console.print(
        f"Preparing Prefect's database in {home} (first time with this PREFECT_HOME only;"
        " a minute or two)"
    )


def _print_run_page(api: PrefectApi, flow_run_id: str) -> None:
    if api.local is not None:
        console.print(f"run in the Prefect UI: {api.local.run_url(flow_run_id)}")


def _flush_to_server() -> None:
    """Send the run's queued logs and events while its server is still there to take them."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


def _server(args: argparse.Namespace) -> int:
    home = prefect_server.prefect_home()
    match args.action:
        case "start":
            if prefect_server.running_server(home) is None and prefect_server.is_new_home(home):
                _say_preparing(home)
            try:
                server, started = prefect_server.start_server(home, args.port)
            except ServerError as exc:
                console.print(f"[bold red]batchline: {exc}[/]")
                return 2
            except (RuntimeError, TimeoutError) as exc:
                log = home / prefect_server.SERVER_LOG
                console.print(f"[bold red]batchline: the server did not start ({exc}); see {log}")
                return 1
            state = "started" if started else "already running"
            console.print(f"Prefect server {state}: {server.ui_url}  (API {server.api_url})")
            console.print(f"state and log in {home}; stop it with: batchline server stop")
            if configured := prefect_server.configured_api_url(home):
                console.print(f"note: runs use PREFECT_API_URL={configured}, not this server")
        case "stop":
            stopped = prefect_server.stop_server(home)
            console.print(
                f"stopped the Prefect server at {stopped.ui_url}"
                if stopped
                else f"no batchline Prefect server runs for PREFECT_HOME={home}"
            )
        case "status":
            running = prefect_server.running_server(home)
            if running is None:
                console.print(f"no batchline Prefect server runs for PREFECT_HOME={home}")
                return 1
            console.print(f"Prefect server running: {running.ui_url}  (API {running.api_url})")
    return 0


def demo_system_prompt() -> str:
    """The demo's long shared instructions: long enough for the prompt cache to take them."""
    return resources.files("batchline").joinpath("data/demo-system-prompt.txt").read_text("utf-8")


def demo_documents() -> str:
    """The folder of documents shipped for the demo."""
    return str(resources.files("batchline").joinpath("data/demo"))


def _print_result(result: RunSummary | BuildSummary) -> None:
    from batchline.write import RunSummary

    table = Table(title="batchline summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    if not isinstance(result, RunSummary):
        table.add_row("requests (dry run, nothing submitted)", str(result.requests))
        table.add_row("invalid documents", str(result.invalid))
        table.add_row("request bytes", f"{result.request_bytes:,}")
        table.add_row("estimated input tokens", f"{result.estimated_input_tokens:,}")
        table.add_row("worst-case cost at batch prices", _usd(result.worst_case_cost_usd))
        console.print(table)
        return
    for status, rows in sorted(result.by_status.items()):
        table.add_row(f"rows {status}", str(rows))
    for name, tokens in sorted(result.tokens.items()):
        table.add_row(name, f"{tokens:,}")
    table.add_row("batches", str(result.batches))
    table.add_row("cost at batch prices", _usd(result.cost_usd))
    table.add_row("cost at standard prices", _usd(result.standard_cost_usd))
    console.print(table)
    console.print(f"results: {result.output}  (pandas.read_parquet({result.output!r}))")


def _print_typed_columns(output: str) -> None:
    """The structured-output columns of a run's results, with their Arrow types as headers."""
    import pyarrow.dataset as ds

    from batchline.schemas import RESULTS
    from batchline.storage import OutputLayout

    layout = OutputLayout(output)
    results = ds.dataset(layout.path("results"), format="parquet", filesystem=layout.fs).to_table()
    typed = [field for field in results.schema if field.name not in RESULTS.names]
    table = Table(title="typed columns (structured outputs)")
    for header in ("doc_id", "status", *(f"{f.name}\n{f.type}" for f in typed), "attempts"):
        table.add_column(header)
    rows = results.sort_by("doc_id").to_pylist()
    for row in rows:
        cells = [row["doc_id"], row["status"], *(row[f.name] for f in typed), row["attempts"]]
        table.add_row(*("" if cell is None else str(cell) for cell in cells))
    console.print(table)


def _usd(value: float | None) -> str:
    return "unknown (no price)" if value is None else f"${value:,.4f}"


if __name__ == "__main__":
    sys.exit(main())
