"""Security policies: the format and its validation, compilation into BPF map contents,
loading and reloading them into the kernel, and decoding what matched."""
