"""Running batchline locally: the stack (stack.py, docs/deployments.md) and the processes tests
and benchmarks start (local.py). Not installed with the package."""
