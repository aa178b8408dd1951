"""`batchline emulator ...`: serve the emulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

import orjson
from pydantic import ValidationError

from batchline.emulator.config import EmulatorConfig
from batchline.emulator.emulator import Emulator


def _pair(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=RATE, got {text!r}")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rate must be a number, got {value!r}") from None


def _parser() -> argparse.ArgumentParser:
    fields = EmulatorConfig.model_fields

    def about(name: str) -> str:
        return fields[name].description or ""

    parser = argparse.ArgumentParser(
        prog="batchline emulator",
        description="Serve an emulated Anthropic Message Batches API on a local port.",
    )
    parser.add_argument(
        "--port", type=int, default=0, metavar="PORT", help="Port to listen on (0: any free)."
    )
    parser.add_argument("--host", default="127.0.0.1", help=about("host"))
    parser.add_argument(
        "--db",
        dest="db_path",
        metavar="PATH",
        help="SQLite file holding all state, kept across restarts (default: a temporary file).",
    )
    parser.add_argument(
        "--processing-seconds", type=float, metavar="S", help=about("processing_seconds")
    )
    parser.add_argument(
        "--requests-per-second", type=float, metavar="R", help=about("requests_per_second")
    )
    parser.add_argument("--expiry-seconds", type=float, metavar="S", help=about("expiry_seconds"))
    parser.add_argument(
        "--results-retention-seconds",
        type=float,
        metavar="S",
        help=about("results_retention_seconds"),
    )
    parser.add_argument("--cancel-seconds", type=float, metavar="S", help=about("cancel_seconds"))
    parser.add_argument("--seed", type=int, metavar="N", help=about("seed"))
    parser.add_argument(
        "--error-rate",
        type=_pair,
        action="append",
        default=[],
        metavar="TYPE=RATE",
        help=about("error_rates") + " Repeatable.",
    )
    parser.add_argument("--expire-rate", type=float, metavar="RATE", help=about("expire_rate"))
    parser.add_argument(
        "--output-fault-rate",
        type=_pair,
        action="append",
        default=[],
        metavar="KIND=RATE",
        help=about("output_fault_rates") + " Repeatable.",
    )
    parser.add_argument(
        "--http-error-rate",
        type=_pair,
        action="append",
        default=[],
        metavar="CODE=RATE",
        help=about("http_error_rates") + " Repeatable.",
    )
    parser.add_argument(
        "--retry-after",
        dest="retry_after_seconds",
        type=float,
        metavar="S",
        help=about("retry_after_seconds"),
    )
    parser.add_argument("--lose-creates", type=int, metavar="N", help=about("lose_creates"))
    parser.add_argument("--cut-results", type=int, metavar="N", help=about("cut_results"))
    parser.add_argument(
        "--results-outage",
        dest="results_outage_seconds",
        type=float,
        metavar="S",
        help=about("results_outage_seconds"),
    )
    parser.add_argument(
        "--models",
        dest="models_file",
        metavar="FILE.json",
        help=about("models") + " A JSON list of models (see docs/emulator.md).",
    )
    parser.add_argument("--cache-min-tokens", type=int, metavar="N", help=about("cache_min_tokens"))
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The EmulatorConfig that parsed command-line arguments describe."""
    settings = {
        name: value
        for name, value in vars(args).items()
        if name in EmulatorConfig.model_fields and value is not None
    }
    settings["error_rates"] = dict(args.error_rate)
    settings["output_fault_rates"] = dict(args.output_fault_rate)
    if args.models_file:
        settings["models"] = orjson.loads(Path(args.models_file).read_bytes())
    try:
        settings["http_error_rates"] = {int(code): rate for code, rate in args.http_error_rate}
    except ValueError:
        raise ValueError("--http-error-rate codes must be integers") from None
    return EmulatorConfig.model_validate(settings)


def main(argv: list[str] | None = None) -> int:
    """Run the emulator in the foreground; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValidationError, ValueError, OSError) as error:
        parser.error(str(error))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    emulator = Emulator(config, port=args.port)
    try:
        emulator.start()
        print(f"batchline emulator listening on {emulator.base_url}", flush=True)
        # wait() with a timeout keeps the main thread responsive to signals.
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
