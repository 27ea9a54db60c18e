"""Folded stacks, one line per stack: "thread;root;...;leaf count", as Brendan Gregg's
flamegraph.pl, speedscope and most flame graph tools read them. Kernel frames carry the
usual "_[k]" suffix."""

from __future__ import annotations

from collections import Counter

from otelbpf.profiling.model import Profile
from otelbpf.symbols.symbolizer import Frame

KERNEL_SUFFIX = "_[k]"


def frame_label(frame: Frame) -> str:
    name = frame.name.replace(";", ":")  # ";" separates frames
    return name + KERNEL_SUFFIX if frame.kernel else name


def fold(profile: Profile) -> Counter[str]:
    """Stack line (root first, the thread name as the root frame) -> samples."""
    out: Counter[str] = Counter()
    for stack, n in profile.counts.items():
        labels = [stack.comm.replace(";", ":") or "[unknown]"]
        labels += [frame_label(f) for f in reversed(stack.frames)]
        out[";".join(labels)] += n
    return out


def to_text(folded: Counter[str]) -> str:
    return "".join(f"{line} {n}\n" for line, n in sorted(folded.items()))


def parse(text: str) -> Counter[str]:
    """Read folded stacks back (for diffs against an earlier run); bad lines are errors."""
    out: Counter[str] = Counter()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        stack, sep, count = line.rpartition(" ")
        if not sep or not count.isdigit():
            raise ValueError(f"line {number}: expected 'frame;frame;... count', got {line[:80]!r}")
        out[stack] += int(count)
    return out
