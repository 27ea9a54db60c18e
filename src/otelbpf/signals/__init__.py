"""The internal signal model and its mapping to OTLP and the semantic conventions."""
