"""The BPF objects the build made, and no others: SHA-256 digests checked before a load.

`make bpf` writes bpf/bpf-objects.sha256 beside the objects, in sha256sum's format (so
`sha256sum -c` checks it too). Before a sensor opens its object, its digest must be the
manifest's: a changed byte refuses the sensor with both digests. OTELBPF_ALLOW_MODIFIED_BPF=1
loads it anyway, and says so in the log each time. An object with no manifest beside it (a
development build from before manifests, an object a test built elsewhere) is loaded with a
warning: the manifest guards against a changed object, not against one who can also write
the manifest (or this code) - that needs the manifest signed, or the kernel's own signing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from otelbpf.kernel.errors import BpfError

MANIFEST = "bpf-objects.sha256"
OVERRIDE_ENV = "OTELBPF_ALLOW_MODIFIED_BPF"

log = logging.getLogger(__name__)
_unchecked_warned: set[Path] = set()


class IntegrityError(BpfError):
    """A BPF object is not the one the build's manifest names."""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(path: Path) -> dict[str, str]:
    """File name -> hex digest, from sha256sum's output ("<hex>  <name>" or "<hex> *<name>")."""
    out = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        hexdigest, sep, name = line.partition(" ")
        if not sep or len(hexdigest) != 64:
            raise IntegrityError(f"{path}: line {number} is not sha256sum output (\"<digest>  <file>\"); "
                                 "rebuild it with: make bpf")
        out[name.lstrip(" *")] = hexdigest.lower()
    return out


def verify(obj: Path) -> None:
    """Raise IntegrityError unless obj's digest is its manifest's (or the override is set)."""
    manifest = obj.parent / MANIFEST
    if not manifest.is_file():
        if obj.parent not in _unchecked_warned:
            _unchecked_warned.add(obj.parent)
            log.warning("no %s beside %s: BPF objects there are loaded unchecked (make bpf writes it)",
                        MANIFEST, obj.parent)
        return
    want = read_manifest(manifest).get(obj.name)
    found = digest(obj)
    if want == found:
        return
    why = (f"BPF object {obj} is not the one the build made: {manifest} "
           + (f"says sha256 {want}, the file is {found}" if want else f"does not list it (its sha256 is {found})"))
    if os.environ.get(OVERRIDE_ENV) == "1":
        log.warning("%s; loading it anyway because %s=1", why, OVERRIDE_ENV)
        return
    raise IntegrityError(f"{why}; rebuild with `make bpf`, or set {OVERRIDE_ENV}=1 to load it anyway (logged)")
