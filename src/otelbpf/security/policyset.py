"""Which policies the agent loads: the shipped defaults, files and a directory of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from otelbpf.security.policy import Policy, load_policy

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "policies"
# Loaded by default, report only; container-shell-kill is opt-in (name its file).
SHIPPED_DEFAULTS = ("sensitive-files", "outbound-public", "kernel-modules", "setuid-root", "bpf-audit")


@dataclass(frozen=True, slots=True)
class PolicySource:
    files: tuple[str, ...] = ()
    directory: str | None = None
    shipped: bool = True

    def paths(self) -> list[Path]:
        out = [SHIPPED_DIR / f"{name}.yaml" for name in SHIPPED_DEFAULTS] if self.shipped else []
        out += [Path(f) for f in self.files]
        if self.directory:
            out += sorted(Path(self.directory).glob("*.yaml")) + sorted(Path(self.directory).glob("*.yml"))
        return out

    def fingerprint(self) -> tuple:
        """Changes when a file is added, removed or modified: the agent reloads then."""
        out: list[tuple[str, int | None, int | None]] = []
        for path in self.paths():
            try:
                st = path.stat()
                out.append((str(path), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(path), None, None))
        return tuple(out)

    def load(self, unavailable_hooks: dict[str, str] | None = None) -> tuple[list[Policy], list[str]]:
        """(policies, notes). A shipped default that needs a hook this kernel lacks is left out
        with a note; any other policy that cannot load raises PolicyError."""
        policies, notes = [], []
        shipped = {SHIPPED_DIR / f"{name}.yaml" for name in SHIPPED_DEFAULTS} if self.shipped else set()
        hooks = unavailable_hooks or {}
        for path in self.paths():
            policy = load_policy(path)
            missing = {r.hook for r in policy.rules} & set(hooks)
            if path in shipped and missing:
                hook = missing.pop()
                notes.append(f"shipped policy {policy.name} not loaded: {hook}: {hooks[hook]}")
                continue
            policies.append(policy)
        return policies, notes
