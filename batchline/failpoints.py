"""Named crash points, so tests can kill the pipeline between any two steps that matter.

``failpoint(name)`` does nothing unless the environment variable ``BATCHLINE_FAILPOINT`` equals
``name``; then it SIGKILLs its own process on the spot (no cleanup, no finally blocks, like a
power cut or an OOM kill). A test sets the variable for one run, then reruns the same command
without it and checks that nothing was lost or paid twice. The points:

- ``load.done``: documents staged under ``documents/``, the load step not yet finished.
- ``build.done``: manifest and invalid parts written, the build step not yet finished.
- ``submit.intent``: a ledger intent written, the paid create call not yet made.
- ``submit.created``: the create call returned a batch, the ledger does not know its id yet.
- ``submit.done``: every batch of the pass created and recorded, the submit step not finished.
- ``wait.polled``: inside wait, right after the first poll of the batches.
- ``collect.written``: a batch's results written to the temporary file, before its rename.
- ``collect.done``: a batch's ``collected/`` file in place, the collect step not finished.
- ``write.done``: the final ``results/`` written, the run not yet reported.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "BATCHLINE_FAILPOINT"


def failpoint(name: str) -> None:
    """SIGKILL this process if ``BATCHLINE_FAILPOINT`` names this point."""
    if os.environ.get(ENV_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)
