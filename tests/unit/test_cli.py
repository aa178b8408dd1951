"""`batchline run` is built from the flow: each option's name, default and help are the flow's."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from batchline import cli
from flows.pipeline import batch_pipeline


def _run_options() -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(cli.flow_command(batch_pipeline)).parameters)


def _printed(capsys: pytest.CaptureFixture[str]) -> str:
    """What the console printed, table borders and wrapping removed."""
    out = capsys.readouterr().out
    return " ".join(out.translate({ord("│"): " ", ord("╭"): " ", ord("╰"): " "}).split())


def test_every_flow_parameter_is_an_option_with_the_flows_default() -> None:
    flow = inspect.signature(batch_pipeline.fn).parameters
    options = _run_options()
    on_the_command_line = [name for name in flow if name not in cli.NOT_ON_THE_COMMAND_LINE]
    own = ["force", "dask", "dask_workers"]
    assert list(options) == [*on_the_command_line, *own]
    for name in on_the_command_line:
        assert options[name].default == flow[name].default, name
    assert options["source"].kind is inspect.Parameter.POSITIONAL_ONLY
    assert {options[n].kind for n in list(options)[1:]} == {inspect.Parameter.KEYWORD_ONLY}
    assert options["output"].default is inspect.Parameter.empty  # required, as in the flow


def test_each_options_help_is_the_description_the_ui_shows() -> None:
    """Prefect's parameter schema (the UI's form) and the option read one docstring."""
    schema = batch_pipeline.parameters.model_dump()["properties"]
    for name, option in _run_options().items():
        [parameter] = option.annotation.__metadata__
        assert parameter.help, name
        if name in schema:
            assert parameter.help == " ".join(schema[name]["description"].split()), name


def test_run_help_lists_every_option_with_its_default_and_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setattr(cli.console, "width", 1000)
    assert cli.main(["run", "--help"]) == 0
    printed = _printed(capsys)
    for name, parameter in inspect.signature(batch_pipeline.fn).parameters.items():
        option = "--" + name.replace("_", "-")
        if name == "source":
            assert "SOURCE" in printed
        elif name in cli.NOT_ON_THE_COMMAND_LINE:
            assert option not in printed
        else:
            assert option in printed, option
            if parameter.default not in (None, inspect.Parameter.empty, False):
                assert f"[default: {parameter.default}]" in printed, option
    assert "max_tokens of every request, at most the model's limit. [default: 1024]" in printed


def test_options_reach_the_flow_as_its_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dict-or-path parameter takes the path; flags and numbers arrive typed; the options
    of the command line itself do not reach the flow."""
    calls: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def run_flow(parameters: dict[str, Any], **own: Any) -> int:
        calls.append((parameters, own))
        return 0

    tokens = ["run", "docs", "--output", "out", "--max-tokens", "300", "--dry-run"]
    tokens += ["--output-schema", "triage.json", "--max-cost-usd", "2.5", "--dask-workers", "3"]
    command, bound, _ = cli._app(cli.run_command()).parse_args(tokens)
    monkeypatch.setattr(cli, "run_flow", run_flow)
    assert command(*bound.args, **bound.kwargs) == 0
    [(parameters, own)] = calls
    assert parameters == {
        "source": "docs",
        "output": "out",
        "max_tokens": 300,
        "dry_run": True,
        "output_schema": "triage.json",
        "max_cost_usd": 2.5,
    }
    assert own == {"dask_workers": 3}


@pytest.mark.parametrize(
    ("dask", "workers", "expected"),
    [
        ("tcp://127.0.0.1:9", 2, "batchline: --dask-workers sizes a new local cluster"),
        (None, 0, "batchline: --dask-workers 0: give at least 1"),
    ],
)
def test_a_dask_option_that_cannot_work_is_refused_in_one_line(
    dask: str | None,
    workers: int,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    parameters = {"source": str(tmp_path), "output": str(tmp_path / "out")}
    assert cli.run_flow(parameters, dask=dask, dask_workers=workers) == 2
    printed = capsys.readouterr().out
    assert printed.startswith(expected)
    assert len(printed.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_command_line_typo_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    assert cli.main(["server", "restart"]) == 2
    printed = capsys.readouterr()
    lines = (printed.out + printed.err).strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("batchline: ")
    assert "restart" in lines[0]
