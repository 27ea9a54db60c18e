"""otelbpf: kernel events to OpenTelemetry signals through eBPF, with no change to applications."""

__version__ = "0.1.0"
