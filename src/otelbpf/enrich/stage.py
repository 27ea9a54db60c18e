"""The enrichment stage: who each row of a batch is, joined once per batch.

Sensors emit batches keyed by pid (the kernel's join key) and say nothing of who the process
is. Here the distinct pids of a batch are looked up once each in the agent's identity table
(enrich.identity: executable, container, service) and every row gets the index of its
process's resource, in one vectorised pass. It runs on the sensor's drain thread right after
the drain, so a short-lived client (a curl that is gone a millisecond later) is read from
/proc while it is still there, or named by the kernel's command name the batch carries.
"""

from __future__ import annotations

import numpy as np

from otelbpf.enrich.identity import IdentityTable
from otelbpf.signals.model import SpanColumns


class Enrichment:
    def __init__(self, identities: IdentityTable) -> None:
        self.identities = identities

    def spans(self, columns: SpanColumns) -> SpanColumns:
        """columns with `resources` and `resource` set from each row's pid (in place); a batch
        that already has its resources (built for one resource) passes as it is."""
        if columns.resource is not None:
            return columns
        pids, rows = np.unique(columns.pid, return_inverse=True)
        names = columns.names
        resource = self.identities.resource
        columns.resources = [resource(pid, names.get(pid, b"")) for pid in pids.tolist()]
        columns.resource = rows.astype(np.int32).reshape(len(columns))
        return columns
