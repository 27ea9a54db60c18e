"""Pure parsers of protocol bytes; they never import the kernel layer and never raise on
hostile input."""
