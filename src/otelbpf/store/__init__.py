"""Embedded DuckDB store of every signal the agent produces or receives over OTLP."""

from otelbpf.store.db import QueryError, Result, Store, StoreBusy, StoreError

__all__ = ["QueryError", "Result", "Store", "StoreBusy", "StoreError"]
