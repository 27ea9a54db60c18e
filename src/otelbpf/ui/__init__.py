"""Local web UI over the embedded store: loopback only, behind a random access token."""

from otelbpf.ui.server import UiServer

__all__ = ["UiServer"]
