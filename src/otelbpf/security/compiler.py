"""Policies -> the contents of the kernel's maps (pure: no kernel access, unit-tested).

Each rule gets a slot in the rule table. String and address values become LPM trie keys
(hook byte + value); a trie value is the mask of rules whose key is a prefix of it, ORed with
those of every shorter key that is a prefix too, so the kernel's one longest-prefix lookup
yields every rule that matches. Exact paths end with their NUL, so they are prefixes only of
themselves; postfixes are stored reversed and looked up with the reversed path. Paths of
file_open and exec rules are also resolved to (device, inode) identities (security.identity).
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from otelbpf.security import identity
from otelbpf.security.hooks import ACTIONS, HOOKS, MAX_RULES, MAX_VALUES
from otelbpf.security.policy import Policy, PolicyError, Rule

GENERATION_SLOTS = MAX_RULES // 2
TRIE_ENTRIES = 4096
LPM_DATA = 256

# rule flags (bpf/security.bpf.c)
R_BIN_IN, R_BIN_NOTIN, R_PARENT_IN, R_PARENT_NOTIN = 1, 2, 4, 8
R_UID_IN, R_UID_NOTIN, R_CONTAINER, R_HOST, R_CGROUP, R_VALUES = 16, 32, 64, 128, 256, 512
INTENTS = {"any": 0, "read": 1, "write": 2}

RULE = np.dtype([
    ("hook", "<u4"), ("action", "<u4"), ("signal", "<u4"), ("flags", "<u4"), ("intent", "<u4"),
    ("n_uids", "<u4"), ("uids", "<u4", MAX_VALUES), ("n_values", "<u4"), ("_pad", "<u4"),
    ("values", "<u8", MAX_VALUES), ("n_cgroups", "<u4"), ("rate_limit", "<u4"),
    ("cgroups", "<u8", MAX_VALUES), ("rate_window_ns", "<u8"),
])
HOOK_CONF = np.dtype([("rules", "<u8"), ("in_rules", "<u8"), ("notin_rules", "<u8"),
                      ("postfix", "<u4"), ("filters", "<u4")])
IDENTITY_HOOKS = ("file_open", "exec")  # hooks whose kernel side looks opened files up by identity
EVERY_PATH = 4  # hook_conf.filters: every path to the tries (bpf/security.bpf.c)
FIRST_NAME = struct.Struct("<II16s")  # struct first_name: hook, length, the first 16 bytes
BINARY_MASKS = np.dtype([("as_binary", "<u8"), ("as_parent", "<u8")])

TrieKey = tuple[bytes, int]  # (data, prefix length in bits)


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """What user space needs to report a match of one slot."""

    policy: str
    index: int
    hook: str
    severity: str
    action: str            # what the kernel does
    requested_action: str  # what the policy asked for (differs when enforcement is off)
    source: str


@dataclass(slots=True)
class Compiled:
    rules: dict[int, bytes] = field(default_factory=dict)           # slot -> struct rule
    infos: dict[int, RuleInfo] = field(default_factory=dict)
    hooks: dict[int, np.void] = field(default_factory=dict)         # hook id -> struct hook_conf
    paths: dict[TrieKey, int] = field(default_factory=dict)
    postfixes: dict[TrieKey, int] = field(default_factory=dict)
    addrs: dict[TrieKey, int] = field(default_factory=dict)
    binaries: dict[TrieKey, tuple[int, int]] = field(default_factory=dict)  # -> (as_binary, as_parent)
    identities: dict[identity.IdentitySource, int] = field(default_factory=dict)  # -> rule mask
    inodes: dict[bytes, int] = field(default_factory=dict)          # struct inode_key -> rule mask
    first_names: set[bytes] = field(default_factory=set)            # struct first_name keys

    def binary_masks(self, path: str) -> tuple[int, int]:
        """What the kernel computes at exec for a binary path (used to seed running processes)."""
        key = b"\0" + path.encode()[: LPM_DATA - 2] + b"\0"
        as_binary = as_parent = 0
        for (data, bits), (b, p) in self.binaries.items():
            if bits <= len(key) * 8 and key[: bits // 8] == data[: bits // 8]:
                as_binary |= b
                as_parent |= p
        return as_binary, as_parent


def compile_policies(policies: list[Policy], *, first_slot: int = 0, enforce: bool = False,
                     unavailable_hooks: dict[str, str] | None = None) -> Compiled:
    """Compile into slots first_slot .. first_slot + 31; raise PolicyError when they do not fit
    or a rule needs something this host lacks (unavailable_hooks: hook -> reason)."""
    out = Compiled()
    own: dict[str, dict[TrieKey, int]] = {"paths": {}, "postfixes": {}, "addrs": {}}
    own_bin: dict[TrieKey, list[int]] = {}
    hooks: dict[int, list[int]] = {}
    filters: dict[int, int] = {}  # hook id -> ID_* and EVERY_PATH bits
    slot = first_slot
    for policy in policies:
        for index, rule in enumerate(policy.rules):
            where = f"policy {policy.source or policy.name}: rules.{index}"
            if unavailable_hooks and rule.hook in unavailable_hooks:
                raise PolicyError(f"{where}.hook: {rule.hook} cannot run here: {unavailable_hooks[rule.hook]}")
            if slot >= first_slot + GENERATION_SLOTS:
                raise PolicyError(f"{where}: too many rules: the kernel's table holds {GENERATION_SLOTS} "
                                  "rules across all policies loaded at once")
            bit = 1 << slot
            flags, conf = _rule_filters(rule, where, bit, own, own_bin)
            hook = HOOKS[rule.hook]
            conf_masks = hooks.setdefault(hook.id, [0, 0, 0, 0])
            conf_masks[0] |= bit
            if conf == "in":
                conf_masks[1] |= bit
            elif conf == "notin":
                conf_masks[2] |= bit
            if rule.paths and any(m.op == "Postfix" for m in rule.paths):
                conf_masks[3] = 1
            if rule.hook in IDENTITY_HOOKS:
                for match in rule.paths or []:
                    for value in match.values:
                        for source in identity.sources_of(hook.id, match.op, value):
                            out.identities[source] = out.identities.get(source, 0) | bit
                            filters[hook.id] = filters.get(hook.id, 0) | source.kind
                        first = _first_name(hook.id, match.op, value)
                        if first is None:
                            filters[hook.id] = filters.get(hook.id, 0) | EVERY_PATH
                        else:
                            out.first_names.add(first)
            action = rule.action if enforce or rule.action == "post" else "post"
            out.rules[slot] = _rule_struct(rule, hook.id, flags, action, where)
            out.infos[slot] = RuleInfo(policy.name, index, rule.hook, rule.severity or policy.severity,
                                       action, rule.action, policy.source)
            slot += 1
    for hook_id, (rules, in_rules, notin_rules, postfix) in hooks.items():
        conf = np.zeros(1, HOOK_CONF)[0]
        conf["rules"], conf["in_rules"], conf["notin_rules"], conf["postfix"] = rules, in_rules, notin_rules, postfix
        conf["filters"] = filters.get(hook_id, 0)
        out.hooks[hook_id] = conf
    for name, entries in own.items():
        if len(entries) > TRIE_ENTRIES:
            raise PolicyError(f"too many {name} values across the loaded policies: {len(entries)}, "
                              f"the kernel's table holds {TRIE_ENTRIES}")
        setattr(out, name, _with_prefixes(entries))
    as_binary = _with_prefixes({k: v[0] for k, v in own_bin.items()})
    as_parent = _with_prefixes({k: v[1] for k, v in own_bin.items()})
    out.binaries = {k: (as_binary[k], as_parent[k]) for k in own_bin}
    out.inodes = identity.resolve(out.identities)
    return out


def _rule_filters(rule: Rule, where: str, bit: int, own: dict[str, dict[TrieKey, int]],
                  own_bin: dict[TrieKey, list[int]]) -> tuple[int, str | None]:
    """Add the rule's trie entries; return its flags and how the hook filters it by the trie."""
    hook_byte = bytes([HOOKS[rule.hook].id])
    flags = 0
    conf = None
    for match in rule.paths or []:
        conf = "in"
        for value in match.values:
            raw = value.encode()
            if match.op == "Postfix":
                key = hook_byte + raw[::-1]
                own["postfixes"][(key, len(key) * 8)] = own["postfixes"].get((key, len(key) * 8), 0) | bit
            else:
                key = hook_byte + raw + (b"\0" if match.op == "Equal" else b"")
                own["paths"][(key, len(key) * 8)] = own["paths"].get((key, len(key) * 8), 0) | bit
    if rule.addresses:
        conf = "in" if rule.addresses.op == "In" else "notin"
        for value in rule.addresses.values:
            net = ipaddress.ip_network(value, strict=False)
            if net.version == 4:
                addr = b"\0" * 10 + b"\xff\xff" + net.network_address.packed
                bits = 96 + net.prefixlen
            else:
                addr, bits = net.network_address.packed, net.prefixlen
            addr_key = (hook_byte + addr, 8 + bits)
            own["addrs"][addr_key] = own["addrs"].get(addr_key, 0) | bit
    for selector, (flag_in, flag_notin, side) in (("binaries", (R_BIN_IN, R_BIN_NOTIN, 0)),
                                                  ("parent_binaries", (R_PARENT_IN, R_PARENT_NOTIN, 1))):
        match = getattr(rule, selector)
        if match is None:
            continue
        flags |= flag_notin if match.op == "NotIn" else flag_in
        for value in _with_real_paths(match.values):
            raw = b"\0" + value.encode() + (b"" if match.op == "Prefix" else b"\0")
            if len(raw) > LPM_DATA:
                raise PolicyError(f"{where}.{selector}: {value!r} is longer than the kernel matches (254 bytes)")
            masks = own_bin.setdefault((raw, len(raw) * 8), [0, 0])
            masks[side] |= bit
    if rule.uids:
        flags |= R_UID_IN if rule.uids.op == "In" else R_UID_NOTIN
    if rule.namespace:
        flags |= R_CONTAINER if rule.namespace == "container" else R_HOST
    if rule.cgroups:
        flags |= R_CGROUP
    if rule.ports or rule.ids or rule.requests:
        flags |= R_VALUES
    return flags, conf


def _with_real_paths(values: list[str]) -> list[str]:
    """Binary paths and, where a symlink is on the way (/bin/cat on a merged-/usr system is
    /usr/bin/cat), the real one: the kernel names a process's binary by the file it executed."""
    out = list(values)
    for value in values:
        real = os.path.realpath(value) + ("/" if value.endswith("/") else "")
        if real != value and os.path.exists(real) and real not in out:
            out.append(real)
    return out


def _first_name(hook_id: int, op: str, value: str) -> bytes | None:
    """The struct first_name every path this value matches starts with, or None when there is
    no such one name (Postfix, "/", a Prefix that ends inside its first component)."""
    if op == "Postfix":
        return None
    first, slash, _ = value[1:].partition("/")
    if not first or (op == "Prefix" and not slash):
        return None
    raw = first.encode()
    return FIRST_NAME.pack(hook_id, len(raw), raw[:16])


def _rule_struct(rule: Rule, hook_id: int, flags: int, action: str, where: str) -> bytes:
    r = np.zeros(1, RULE)[0]
    r["hook"], r["action"], r["flags"], r["intent"] = hook_id, ACTIONS[action], flags, INTENTS[rule.intent]
    r["signal"] = rule.signal or (9 if action == "sigkill" else 0)
    if rule.uids:
        r["n_uids"] = len(rule.uids.values)
        r["uids"][: len(rule.uids.values)] = rule.uids.values
    values = rule.ports or rule.ids or rule.requests or []
    r["n_values"] = len(values)
    r["values"][: len(values)] = values
    cgroups = [_cgroup_id(path, where) for path in rule.cgroups or []]
    r["n_cgroups"] = len(cgroups)
    r["cgroups"][: len(cgroups)] = cgroups
    if rule.rate_limit:
        r["rate_limit"] = rule.rate_limit.events
        r["rate_window_ns"] = int(rule.rate_limit.per_seconds * 1e9)
    return r.tobytes()


def _cgroup_id(path: str, where: str) -> int:
    """A cgroup v2 id is the inode number of its directory."""
    try:
        return os.stat(path).st_ino
    except OSError as exc:
        raise PolicyError(f"{where}.cgroups: {path}: {exc.strerror} (give the cgroup's directory under "
                          "the cgroup v2 mount)") from None


def _with_prefixes(entries: dict[TrieKey, int]) -> dict[TrieKey, int]:
    """Each key's mask ORed with the masks of every other key that is a prefix of it."""
    def prefix_of(short: TrieKey, long: TrieKey) -> bool:
        (sd, sb), (ld, lb) = short, long
        if sb > lb:
            return False
        a = int.from_bytes(sd.ljust(LPM_DATA, b"\0"), "big") >> (LPM_DATA * 8 - sb)
        b = int.from_bytes(ld.ljust(LPM_DATA, b"\0"), "big") >> (LPM_DATA * 8 - sb)
        return a == b
    return {key: mask | _or(m for other, m in entries.items() if other != key and prefix_of(other, key))
            for key, mask in entries.items()}


def _or(masks) -> int:
    out = 0
    for m in masks:
        out |= m
    return out
