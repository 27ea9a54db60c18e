"""Sinks: where batches leave the agent (OTLP, Prometheus, console, JSON lines)."""
