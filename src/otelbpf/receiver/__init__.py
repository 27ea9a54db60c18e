"""Servers that accept telemetry from others: the embedded OTLP receiver."""
