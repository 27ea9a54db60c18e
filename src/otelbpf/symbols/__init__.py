"""Turning instruction addresses into function names: kernel, native ELF, perf maps."""
