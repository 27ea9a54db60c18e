"""Profile sensor output -> profile_samples rows: one row per (process, thread name, stack) per
profile interval, the stack folded root first ("main;outer;leaf", kernel frames "_[k]")."""

from __future__ import annotations

import json
from collections import Counter

from otelbpf.profiling.folded import frame_label
from otelbpf.profiling.model import Profile
from otelbpf.store.otlp_rows import empty
from otelbpf.store.schema import PROFILE_SAMPLES

Columns = dict[str, list]


def profile_rows(profile: Profile, service: str = "") -> Columns:
    out = empty(PROFILE_SAMPLES)
    stacks: Counter[tuple[int, str, str]] = Counter()
    for stack, n in profile.counts.items():
        folded = ";".join(frame_label(f) for f in reversed(stack.frames)) or "[unknown]"
        stacks[(stack.pid, stack.comm or "[unknown]", folded)] += n
    attrs = json.dumps({"otelbpf.profile.hz": profile.hz, "otelbpf.profile.duration_ns": profile.duration_ns},
                       separators=(",", ":"))
    for (pid, comm, folded), n in stacks.items():
        for column, value in zip(out.values(), (profile.start_unix_ns, service, pid, comm, folded, n, attrs)):
            column.append(value)
    return out
