"""The security policy format: YAML validated by pydantic, errors naming file, line and field.

    name: sensitive-files
    severity: warn                    # debug | info | warn | error | fatal
    rules:
      - hook: file_open               # file_open exec connect privilege module_load ptrace mount
        paths:                        # file_open, exec, mount (target); any one entry matches
          - {op: Prefix, values: [/etc/sudoers, /root/.ssh/]}
          - {op: Equal, values: [/etc/shadow]}
        intent: read                  # file_open: read | write | any
        binaries: {op: NotIn, values: [/usr/sbin/sshd]}
        parent_binaries: {op: In, values: [/usr/bin/bash]}
        uids: {op: In, values: [1000]}
        namespace: container          # host | container (pid namespace differs from the host's)
        cgroups: [/sys/fs/cgroup/unified/app]
        action: post                  # post | sigkill | signal (with signal: N)
        rate_limit: {events: 100, per_seconds: 1}

connect takes `addresses: {op: In|NotIn, values: [CIDR, ...]}` and `ports: [...]`;
privilege takes `ids: [...]` (target uid/gid of set*id); ptrace takes `requests: [...]`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from otelbpf.security.hooks import HOOKS, MAX_VALUES

SEVERITIES = ("debug", "info", "warn", "error", "fatal")
OVERRIDE_REFUSAL = ("action override needs bpf_override_return (kprobes) or an LSM program; otelbpf hooks "
                    "syscall tracepoints, which cannot change a return value, and neither kprobes nor LSM "
                    "programs load on this kernel: use sigkill")


class PolicyError(ValueError):
    """An invalid policy; the message names the file, the line and field, and the reason."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathMatch(_Model):
    op: Literal["Equal", "Prefix", "Postfix"]
    values: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _absolute(self) -> PathMatch:
        for v in self.values:
            if not v:
                raise ValueError("an empty path matches nothing")
            if self.op != "Postfix" and not v.startswith("/"):
                raise ValueError(f"{self.op} needs an absolute path (got {v!r}); relative opens are "
                                 "matched by Postfix only")
            if len(v.encode()) > 254:
                raise ValueError(f"paths longer than 254 bytes are not matched in the kernel (got {len(v)})")
        return self


class SetMatch(_Model):
    op: Literal["In", "NotIn", "Prefix"]
    values: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _absolute(self) -> SetMatch:
        for v in self.values:
            if not v.startswith("/"):
                raise ValueError(f"binary paths must be absolute (got {v!r})")
        return self


class AddressMatch(_Model):
    op: Literal["In", "NotIn"]
    values: list[str] = Field(min_length=1)

    @field_validator("values")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for v in values:
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError:
                raise ValueError(f"{v!r} is not a CIDR (like 10.0.0.0/8 or fd00::/8)") from None
        return values


class UidMatch(_Model):
    op: Literal["In", "NotIn"]
    values: list[int] = Field(min_length=1, max_length=MAX_VALUES)


class RateLimit(_Model):
    events: int = Field(ge=1, le=1_000_000)
    per_seconds: float = Field(1.0, gt=0, le=3600)


class Rule(_Model):
    hook: str
    paths: list[PathMatch] | None = None
    intent: Literal["read", "write", "any"] = "any"
    addresses: AddressMatch | None = None
    ports: list[int] | None = Field(None, max_length=MAX_VALUES)
    ids: list[int] | None = Field(None, max_length=MAX_VALUES)
    requests: list[int] | None = Field(None, max_length=MAX_VALUES)
    binaries: SetMatch | None = None
    parent_binaries: SetMatch | None = None
    uids: UidMatch | None = None
    namespace: Literal["host", "container"] | None = None
    cgroups: list[str] | None = Field(None, max_length=MAX_VALUES)
    action: Literal["post", "sigkill", "signal", "override"] = "post"
    signal: int | None = Field(None, ge=1, le=64)
    severity: Literal[SEVERITIES] | None = None  # type: ignore[valid-type]
    rate_limit: RateLimit | None = None

    @field_validator("hook")
    @classmethod
    def _known_hook(cls, hook: str) -> str:
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook!r} (known: {', '.join(HOOKS)})")
        return hook

    @field_validator("ports")
    @classmethod
    def _ports(cls, ports: list[int] | None) -> list[int] | None:
        for p in ports or []:
            if not 0 < p < 65536:
                raise ValueError(f"port {p} is not in 1..65535")
        return ports

    @model_validator(mode="after")
    def _fits_hook(self) -> Rule:
        hook = HOOKS[self.hook]
        for name in ("paths", "addresses", "ports", "ids", "requests"):
            if getattr(self, name) is not None and name not in hook.arguments:
                raise ValueError(f"{name} does not apply to hook {self.hook} "
                                 f"(it takes: {', '.join(hook.arguments) or 'no argument filters'})")
        if self.intent != "any" and self.hook != "file_open":
            raise ValueError("intent applies to hook file_open only")
        if self.action == "override":
            raise ValueError(OVERRIDE_REFUSAL)
        if (self.action == "signal") != (self.signal is not None):
            raise ValueError("action signal needs signal: N (and signal: N needs action: signal)")
        return self


class Policy(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    description: str = ""
    severity: Literal[SEVERITIES] = "warn"  # type: ignore[valid-type]
    rules: list[Rule] = Field(min_length=1)
    source: str = Field("", exclude=True)  # the file it came from


def load_policy(path: str | Path) -> Policy:
    """Read and validate one policy file; raise PolicyError naming file, line, field, reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"policy {path}: cannot read: {exc.strerror}") from None
    return parse_policy(text, str(path))


def parse_policy(text: str, source: str) -> Policy:
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise PolicyError(f"policy {source}: {where}invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"policy {source}: must be a mapping with name and rules")
    try:
        return Policy.model_validate({**data, "source": source})
    except ValidationError as exc:
        lines = _line_index(node)
        raise PolicyError("\n".join(_describe(source, err, lines) for err in exc.errors())) from None


def _line_index(node: Any, loc: tuple = ()) -> dict[tuple, int]:
    """YAML location (keys and list indexes) -> 1-based line, from the composed node tree."""
    out = {loc: node.start_mark.line + 1} if node is not None else {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[(*loc, key.value)] = key.start_mark.line + 1
            out.update({k: v for k, v in _line_index(value, (*loc, key.value)).items() if k != (*loc, key.value)})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.update(_line_index(item, (*loc, i)))
    return out


def _describe(source: str, err: ErrorDetails, lines: dict[tuple, int]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
    line = next((lines[loc[:end]] for end in range(len(loc), -1, -1) if loc[:end] in lines), None)
    field = ".".join(str(p) for p in loc) or "(top level)"
    reason = err.get("ctx", {}).get("error") or err["msg"]
    if err["type"] == "extra_forbidden":
        reason = "unknown field (check the spelling)"
    elif err["type"] == "literal_error":
        reason = f"must be one of {err['ctx']['expected']} (got {err.get('input')!r})"
    elif err["type"] == "too_long":
        reason = f"too many values for the kernel's table: at most {err['ctx']['max_length']}"
    return f"policy {source}: line {line}: {field}: {reason}" if line else f"policy {source}: {field}: {reason}"
