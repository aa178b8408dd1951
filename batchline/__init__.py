"""batchline: bulk LLM work through Anthropic's Message Batches API, orchestrated by Prefect.

The modules in this package are plain Python and know nothing of Prefect; the Prefect layer lives
in the top-level ``flows`` and ``blocks`` packages and stays thin over them.
"""

__version__ = "0.1.0"
