"""Prefect flows of batchline. The flow file reads like the DAG; the logic lives in batchline."""
