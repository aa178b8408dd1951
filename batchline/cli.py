"""The `batchline` command: run the pipeline, run the demo, a local Prefect server, the emulator.

This is the console surface, so it is the one place that prints. Its parser is cyclopts, Prefect's
own CLI library. `batchline run` is built from the signature and docstring of the flow itself
(``flow_command``): each option's name, type, default and help are the flow parameter's, written
once in flows/pipeline.py, where Prefect's UI form reads them too. Prefect is imported only by
the commands that run a flow, so `batchline --help`, `server` and `emulator` start fast, and only
after `batchline.prefect_server` has chosen the Prefect API the run uses (Prefect reads its
settings once, when imported): a `batchline run` is parsed inside ``prefect_api``.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from cyclopts import App, CycloptsError, Parameter
from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from batchline import prefect_server
from batchline.prefect_server import PrefectApi, ServerError

if TYPE_CHECKING:
    from anthropic import Anthropic
    from prefect import Flow

    from batchline.build import BuildSummary
    from batchline.status import OutputStatus
    from batchline.write import RunSummary
    from flows.interrupt import CtrlC

# soft_wrap: a refusal is one line however narrow the terminal (or 80 columns when piped).
console = Console(soft_wrap=True)

DEMO_OUTPUT = "batchline-demo-out"
STRUCTURED_DEMO_OUTPUT = "batchline-demo-structured-out"
HELP_FLAGS = ("--help", "-h")
RUN_HELP = "Run the pipeline over a folder or file of documents."
# Flow parameters that mean nothing to a run from the command line, which never suspends.
NOT_ON_THE_COMMAND_LINE = frozenset({"suspend_after_seconds"})


def main(argv: list[str] | None = None) -> int:
    tokens = sys.argv[1:] if argv is None else argv
    try:
        if tokens[:1] != ["run"]:
            return _call(_app(), tokens)
        if any(flag in tokens for flag in HELP_FLAGS):
            return _call(_app(run_command()), tokens)
        with prefect_api() as ready:
            return _call(_app(run_command()), tokens, before=ready)
    except CycloptsError:  # the error formatter has printed its line
        return 2
    except ServerError as exc:
        console.print(f"[bold red]batchline: {exc}[/]")
        return 1


def _app(run: Callable[..., int] | None = None) -> App:
    """The command line; ``run`` is `batchline run`, which only its own invocations build."""
    app = App(
        name="batchline",
        help="Bulk LLM work through Anthropic's Message Batches API.",
        help_flags=HELP_FLAGS,
        version_flags=(),
        # Flags as they always were: --dry-run, no --no-dry-run.
        default_parameter=Parameter(negative=()),
        console=console,
        error_formatter=lambda error: f"[bold red]batchline: {escape(str(error))}[/]",
        exit_on_error=False,
    )
    if run is None:  # listed with its help; `batchline run` itself builds the app with it
        app.command(App(name="run", help=RUN_HELP))
    else:
        app.command(run, name="run", help=RUN_HELP)
    app.command(demo)
    app.command(server)
    app.command(status)
    app.command(cancel)
    # Everything after `emulator` is the emulator's own, --help included.
    app.command(emulator, help_flags=())
    return app


def _call(app: App, tokens: list[str], before: Callable[[], None] = lambda: None) -> int:
    """Parse ``tokens`` (a typo ends here, before any wait), call ``before``, run the command."""
    if not tokens:
        app.help_print([])
        return 2
    command, bound, _ = app.parse_args(tokens)
    before()
    result = command(*bound.args, **bound.kwargs)
    return 0 if result is None else int(result)  # help prints and returns None


def run_command() -> Callable[..., int]:
    """`batchline run`: building it imports the flow, so Prefect."""
    from flows.pipeline import batch_pipeline

    return flow_command(batch_pipeline)


def flow_command(flow: Flow[..., Any]) -> Callable[..., int]:
    """`batchline run` for ``flow``: its first parameter the argument, the others options.

    Each option has the parameter's name (``max_tokens`` is ``--max-tokens``), type, default and
    the help its docstring's ``Args:`` gives, parsed as Prefect parses it for the UI's form. The
    options of the command line itself follow, from ``run_flow``'s signature the same way.
    """
    first, *rest = (p for p in _options(flow.fn) if p.name not in NOT_ON_THE_COMMAND_LINE)
    own = [p for p in _options(run_flow) if p.name != "parameters"]
    parameters = [first.replace(kind=inspect.Parameter.POSITIONAL_ONLY), *rest, *own]

    def run(*arguments: Any, **options: Any) -> int:
        # Only what was given: the flow and run_flow apply their own defaults to the rest.
        given = {p.name: options.pop(p.name) for p in own if p.name in options}
        return run_flow(dict(zip([first.name], arguments, strict=True)) | options, **given)

    run.__signature__ = inspect.Signature(parameters, return_annotation=int)  # type: ignore[attr-defined]
    # cyclopts reads the types with typing.get_type_hints, which reads __annotations__.
    run.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": int}
    run.__doc__ = RUN_HELP
    return run


def _options(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    """``fn``'s parameters as keyword-only options, each with its docstring's help.

    A parameter that takes a str among other types takes the str (``--output-schema`` a path).
    """
    from prefect.utilities.callables import parameter_docstrings

    docs = parameter_docstrings(inspect.getdoc(fn))
    return [
        p.replace(
            kind=inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[
                _command_line_type(p.annotation),
                Parameter(help=" ".join(docs.get(p.name, "").split())),
            ],
        )
        for p in inspect.signature(fn, eval_str=True).parameters.values()
    ]


def _command_line_type(annotation: Any) -> Any:
    """``annotation``, or ``str`` (``str | None`` if optional) when it is a union taking a str."""
    alternatives = get_args(annotation)
    if get_origin(annotation) not in (Union, types.UnionType) or str not in alternatives:
        return annotation
    return str | None if type(None) in alternatives else str


def run_flow(
    parameters: dict[str, Any],
    *,
    force: bool = False,
    dask: str | None = None,
    dask_workers: int | None = None,
) -> int:
    """Run the pipeline and print its summary, or one line saying why not; the exit code.

    Args:
        parameters: The flow's parameters.
        force: Reuse an output that belongs to another source (its results are replaced).
        dask: Address of a running Dask scheduler (tcp://host:8786): the flow's tasks run on
            its workers (flows/dask_pipeline.py).
        dask_workers: Run the flow's tasks on a new local Dask cluster of this many processes.
    """
    from pydantic import ValidationError

    from batchline.config import ConfigError, RunError
    from batchline.console import one_line, quiet_refusals
    from batchline.storage import OutputLayout, release_output
    from flows.interrupt import CtrlC, on_ctrl_c
    from flows.pipeline import batch_pipeline

    # Most of the process's objects are the modules just imported, which live as long as it
    # does. Frozen, the collector's full passes and the interpreter's teardown at exit no longer
    # walk them: that teardown alone took a second on a busy 2-core machine.
    gc.freeze()
    # A run makes millions of short-lived containers (rows, params) and few cycles: the young
    # generation collected every 700 of them took 0.6 s of a 100,000-document run in 1,500
    # collections; every 50,000, about 0.1 s in ten. The full passes keep their ratio to it.
    gc.set_threshold(50_000, 10, 10)
    ctrl_c = CtrlC()
    output = parameters["output"]
    try:
        flow = batch_pipeline
        if dask is not None or dask_workers is not None:
            flow = _on_dask(dask, dask_workers)
        if force:
            release_output(OutputLayout(output))
        with on_ctrl_c(ctrl_c), live_status(), quiet_refusals():
            result = flow(**parameters)
    except (ConfigError, ValidationError) as exc:
        console.print(f"[bold red]batchline: {escape(one_line(exc))}[/]")
        return 2
    except RunError as exc:
        console.print(f"[bold red]batchline: the run stopped: {exc}[/]")
        return 1
    except KeyboardInterrupt:
        return _interrupted(output, ctrl_c)
    _print_result(result)
    return 0


def _on_dask(address: str | None, workers: int | None) -> Flow[..., RunSummary | BuildSummary]:
    from batchline.config import ConfigError
    from flows.dask_pipeline import distributed_pipeline

    if address is not None and workers is not None:
        raise ConfigError(
            "--dask-workers sizes a new local cluster; with --dask ADDRESS the scheduler's "
            "workers run the tasks: give one of the two"
        )
    if workers is not None and workers < 1:
        raise ConfigError(f"--dask-workers {workers}: give at least 1")
    return distributed_pipeline(address, 2 if workers is None else workers)


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
    if in_flight:
        message += f", or batchline cancel {output} to stop paying for them"
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


def demo(*, output: str | None = None, structured: bool = False) -> int:
    """Run the pipeline on bundled documents against the bundled emulator.

    Args:
        output: Output root; by default batchline-demo-out, or batchline-demo-structured-out
            with --structured.
        structured: Classify bundled support tickets into typed columns (structured outputs).
    """
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
    output = output or (STRUCTURED_DEMO_OUTPUT if structured else DEMO_OUTPUT)
    job: dict[str, Any]
    if structured:
        source = str(resources.files("batchline").joinpath("data/support-tickets"))
        job = {
            "template": (
                "Classify this support ticket by category, sentiment and urgency:\n\n{text}"
            ),
            "output_schema": str(resources.files("batchline").joinpath("data/ticket-schema.json")),
            "retry_invalid_output": True,
        }
    else:
        source = demo_documents()
        job = {"template": "Summarize in one sentence: {text}", "system": demo_system_prompt()}
    with prefect_api(demo=True) as ready, Emulator(config) as emulator:
        ready()
        # The demo never talks to the real API: the emulator's URL and a throwaway key are set
        # for this process only.
        os.environ["ANTHROPIC_BASE_URL"] = emulator.base_url
        os.environ["ANTHROPIC_API_KEY"] = "demo-key-for-the-local-emulator"
        console.print(f"emulator at {emulator.base_url}; documents: {source}")
        code = run_flow(
            {
                "source": source,
                "output": output,
                **job,
                "poll_interval": 0.5,
                "max_poll_interval": 2,
            }
        )
        if code == 0 and structured:
            _print_typed_columns(output)
        return code


@contextmanager
def prefect_api(demo: bool = False) -> Iterator[Callable[[], None]]:
    """The Prefect API of a run, chosen before Prefect is imported (batchline/prefect_server.py).

    Yields a call that waits until that API answers: the caller parses its command line first,
    so that a typo is reported at once. With the local server up the run's UI address is printed
    when the run starts and ends.
    """
    api = prefect_server.choose_api()
    preparing = api.prepares_database
    watch = prefect_server.FlowRunWatch(lambda run_id: _print_run_page(api, run_id))
    with prefect_server.using(api) as server_ready:
        import flows.pipeline  # noqa: F401  (Prefect's import overlaps its server's start)

        def ready() -> None:
            if preparing:
                _say_preparing(api.home)
            try:
                server_ready()
            except (RuntimeError, TimeoutError) as exc:
                log = api.home / prefect_server.RUN_SERVER_LOG
                raise ServerError(
                    f"Prefect's server did not start ({exc}); its log: {log}"
                ) from exc

        # After the import: Prefect's logging set-up replaces the handlers of its loggers.
        with watch.watching():
            try:
                yield ready
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


def server(
    action: Literal["start", "stop", "status"], /, *, port: int = prefect_server.DEFAULT_PORT
) -> int:
    """A local Prefect server with its UI, used by runs while it is up.

    Args:
        action: start it in the background (idempotent), stop it, or say where it runs.
        port: For start: the UI's and API's port.
    """
    home = prefect_server.prefect_home()
    match action:
        case "start":
            if prefect_server.running_server(home) is None and prefect_server.is_new_home(home):
                _say_preparing(home)
            try:
                server, started = prefect_server.start_server(home, port)
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


def status(output: str, /) -> int:
    """What an output holds: documents, requests, batches paid for and still processing, answers,
    cost so far. Reads its files only: safe while a run works on it, and free.

    Args:
        output: A run's output root, local or s3://.
    """
    from batchline.config import ConfigError
    from batchline.status import output_status
    from batchline.storage import OutputLayout

    try:
        state = output_status(OutputLayout(output))
    except ConfigError as exc:
        console.print(f"[bold red]batchline: {escape(str(exc))}[/]")
        return 2
    _print_status(state)
    return 0


def cancel(output: str, /) -> int:
    """Cancel an output's batches that are still processing, to stop paying for them.

    Stop its run first (Ctrl-C, or cancel the flow run): a run still going would submit what it
    has not yet. Requests processed before the cancel are billed; the same run command collects
    their answers later, and the canceled requests stay canceled rows unless it is given
    --retry-canceled. Uses ANTHROPIC_API_KEY.

    Args:
        output: A run's output root, local or s3://.
    """
    from anthropic import APIError

    from batchline.cancel import cancel_processing
    from batchline.client import make_client
    from batchline.config import ConfigError
    from batchline.lock import output_lock
    from batchline.storage import OutputLayout, run_marker

    def connect() -> Anthropic:
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise ConfigError("set ANTHROPIC_API_KEY (the run's key) to cancel its batches")
        return make_client()

    layout = OutputLayout(output)
    try:
        run_marker(layout)
        # Held while cancelling, so no run submits meanwhile; a run holding it is refused.
        busy = "stop that run first (Ctrl-C, or cancel its flow run), then cancel"
        with output_lock(layout, "batchline cancel", wait_seconds=0, busy=busy):
            canceled = cancel_processing(connect, layout)
    except ConfigError as exc:
        console.print(f"[bold red]batchline: {escape(str(exc))}[/]")
        return 2
    except APIError as exc:
        console.print(f"[bold red]batchline: the API did not cancel: {escape(str(exc))}[/]")
        return 1
    if not canceled:
        console.print(f"nothing to cancel: no batch of {layout.root} is processing")
        return 0
    for batch in canceled:
        what = "had already ended" if batch.processing_status == "ended" else "canceled"
        console.print(f"{batch.batch_id} ({batch.request_count:,} requests): {what}")
    console.print(
        "Requests processed before the cancel are billed. The run's own command collects their "
        "answers and keeps canceled requests as canceled rows (with --retry-canceled it submits "
        "them again); it would also submit any request never submitted yet."
    )
    return 0


def emulator(*argv: Annotated[str, Parameter(allow_leading_hyphen=True)]) -> int:
    """Serve the Message Batches API emulator (batchline emulator --help for its options)."""
    from batchline.emulator.cli import main as emulator_main

    return emulator_main(list(argv))


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


def _print_status(state: OutputStatus) -> None:
    table = Table(title=f"batchline status of {state.output}")
    table.add_column("what")
    table.add_column("value")
    table.add_row("source", state.source)
    loaded, built, results = state.loaded, state.built, state.results
    table.add_row(
        "documents loaded",
        "not yet" if loaded is None else f"{loaded.documents:,} ({loaded.invalid:,} invalid)",
    )
    table.add_row(
        "requests built",
        "not yet"
        if built is None
        else f"{built.requests:,} ({built.invalid:,} documents invalid), at most "
        f"{_usd(built.worst_case_cost_usd)} at batch prices",
    )
    table.add_row(
        "batches created",
        f"{state.batches_created:,} ({state.batches_adopted:,} adopted after a lost response)",
    )
    table.add_row("requests submitted", f"{state.requests_submitted:,}")
    if state.creates_in_doubt:
        doubt = f"{state.creates_in_doubt:,} (the next run looks for their batches before paying)"
        table.add_row("creates in doubt", doubt)
    table.add_row(
        "still processing",
        ", ".join(
            f"{p.batch_id} ({p.request_count:,} requests"
            + (f", expires {p.expires_at:%Y-%m-%d %H:%M} UTC)" if p.expires_at else ")")
            for p in state.processing
        )
        or "nothing",
    )
    table.add_row("answers collected", _counts(state.answers) or "none yet")
    table.add_row("spent so far at batch prices", _usd(state.spent_usd))
    table.add_row(
        "results",
        "not written for the answers collected"
        if results is None
        else f"{results.rows:,} rows ({_counts(results.by_status)}) in {results.output}",
    )
    console.print(table)


def _counts(by_status: dict[str, int]) -> str:
    return ", ".join(f"{status} {n:,}" for status, n in sorted(by_status.items()))


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
