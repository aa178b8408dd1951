"""Flow modules must not shadow installed packages when Prefect loads a flow file by path."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def test_no_flow_module_shares_a_name_with_an_importable_module() -> None:
    # Prefect puts flows/ on sys.path when a deployment loads flows/pipeline.py, so a module
    # named like a package (distributed.py did) replaces that package in every flow run.
    clashes = [
        path.name
        for path in FLOWS.glob("*.py")
        if path.stem != "__init__" and importlib.util.find_spec(path.stem) is not None
    ]
    assert clashes == []


def test_a_deployed_flow_run_loads_prefect_collections_without_errors(tmp_path: Path) -> None:
    """What a deployed flow-run process does, in a folder of its own: load the flow by module
    path (prefect.yaml's entrypoints), then Prefect's collections."""
    script = (
        "from prefect.flows import load_flow_from_entrypoint\n"
        "from prefect.plugins import load_prefect_collections\n"
        "load_flow_from_entrypoint('flows.pipeline:batch_pipeline')\n"
        "loaded = load_prefect_collections()\n"
        "failed = {k: v for k, v in loaded.items() if isinstance(v, Exception)}\n"
        "assert not failed, failed\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PREFECT_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Failed to load collection" not in done.stdout + done.stderr
