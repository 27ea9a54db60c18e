"""Processors between sensors and sinks: redaction, sampling, batching, routing."""
