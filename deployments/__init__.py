"""Scripts that run batchline's deployments locally (see stack.py and docs/deployments.md)."""
