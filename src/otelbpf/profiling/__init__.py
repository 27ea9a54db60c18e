"""Continuous CPU profiling: kernel sampling, symbolization, the aggregated profile."""
