"""Sensors: one module per capability, each a BPF object plus the decoder of its events."""
