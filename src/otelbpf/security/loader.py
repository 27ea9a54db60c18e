"""Writing compiled policies into the kernel's maps, and replacing them while programs run.

The rule table has two generations of slots (0-31, 32-63). A reload fills the idle
generation and its trie entries next to the live ones, then switches each hook's rule mask
(one map write per hook), then removes the old generation. Every event is matched either
by the old or by the new policy set, never by half of one, and nothing is detached.
"""

from __future__ import annotations

import os

import numpy as np

from otelbpf.enrich import procfs
from otelbpf.kernel import BpfError, BpfObject
from otelbpf.kernel.objects import BPF_NOEXIST, possible_cpus
from otelbpf.security import identity
from otelbpf.security.compiler import BINARY_MASKS, GENERATION_SLOTS, HOOK_CONF, LPM_DATA, Compiled, TrieKey
from otelbpf.security.hooks import HOOKS

BPF_EXIST = 2

PROC_STATE = np.dtype([("masks", BINARY_MASKS), ("binary", "S256")])
RULE_STATS = np.dtype([("matches", "<u8"), ("actions", "<u8"), ("limited", "<u8"), ("lost", "<u8")])
ADDR_DATA = 20


def _u32(n: int) -> bytes:
    return int(n).to_bytes(4, "little")


def _u64(n: int) -> bytes:
    return int(n).to_bytes(8, "little")


def _trie_key(key: TrieKey, size: int) -> bytes:
    data, bits = key
    return _u32(bits) + data.ljust(size, b"\0")


class PolicyMaps:
    """The policy state of one loaded security.bpf.o."""

    def __init__(self, obj: BpfObject):
        self._obj = obj
        self._maps = obj.maps
        self.live: Compiled | None = None
        self.generation = 1  # the first apply() fills generation 0

    def next_first_slot(self) -> int:
        return (1 - self.generation) * GENERATION_SLOTS

    def apply(self, new: Compiled) -> None:
        """Make `new` (compiled for next_first_slot()) the live policy set."""
        old = self.live or Compiled()
        new_gen = 1 - self.generation
        old_bits = ((1 << GENERATION_SLOTS) - 1) << (self.generation * GENERATION_SLOTS)
        for slot, rule in new.rules.items():
            self._clear_slot_counters(slot)
            self._maps["rules"].update(_u32(slot), rule)
        tries = (("paths", LPM_DATA), ("postfixes", LPM_DATA), ("addrs", ADDR_DATA))
        for name, size in tries:  # the new entries beside the old ones
            for key, mask in getattr(new, name).items():
                kept = getattr(old, name).get(key, 0) & old_bits
                self._maps[name].update(_trie_key(key, size), _u64(kept | mask))
        for key, (as_bin, as_par) in new.binaries.items():
            ob, op = old.binaries.get(key, (0, 0))
            self._maps["binaries"].update(_trie_key(key, LPM_DATA),
                                          _u64((ob & old_bits) | as_bin) + _u64((op & old_bits) | as_par))
        self._write_bloom(old.inodes.keys() | new.inodes.keys())
        for key, mask in new.inodes.items():
            self._maps["inodes"].update(key, _u64((old.inodes.get(key, 0) & old_bits) | mask))
        for key in new.first_names:
            self._maps["first_names"].update(key, b"\1")
        self._rewrite_procs(new, keep_bits=old_bits)
        for hook in HOOKS.values():  # the switch
            conf = new.hooks.get(hook.id, np.zeros(1, HOOK_CONF)[0])
            self._maps["hooks"].update(_u32(hook.id), conf.tobytes())
        for name, size in tries:  # the old generation goes
            for key in getattr(old, name).keys() - getattr(new, name).keys():
                self._maps[name].delete(_trie_key(key, size))
            for key in getattr(old, name).keys() & getattr(new, name).keys():
                self._maps[name].update(_trie_key(key, size), _u64(getattr(new, name)[key]))
        self._write_inodes(old.inodes, new.inodes)
        for key in old.first_names - new.first_names:
            self._maps["first_names"].delete(key)
        for key in old.binaries.keys() - new.binaries.keys():
            self._maps["binaries"].delete(_trie_key(key, LPM_DATA))
        for key in old.binaries.keys() & new.binaries.keys():
            as_bin, as_par = new.binaries[key]
            self._maps["binaries"].update(_trie_key(key, LPM_DATA), _u64(as_bin) + _u64(as_par))
        self._rewrite_procs(new, keep_bits=0)
        for slot in old.rules:
            self._maps["rules"].update(_u32(slot), bytes(self._maps["rules"].value_size))
        self.live, self.generation = new, new_gen

    def refresh_identities(self) -> bool:
        """Resolve the live rules' paths again (a protected file replaced by a rename over it is
        a new inode; a file created since is one to protect); True if the kernel's table changed."""
        if self.live is None:
            return False
        inodes = identity.resolve(self.live.identities)
        if inodes == self.live.inodes:
            return False
        self._write_bloom(self.live.inodes.keys() | inodes.keys())
        for key, mask in inodes.items():  # the new identities first: no gap
            self._maps["inodes"].update(key, _u64(mask))
        self._write_inodes(self.live.inodes, inodes)
        self.live.inodes = inodes
        return True

    def _write_inodes(self, old: dict[bytes, int], new: dict[bytes, int]) -> None:
        for key in old.keys() - new.keys():
            self._maps["inodes"].delete(key)
        for key in old.keys() & new.keys():
            self._maps["inodes"].update(key, _u64(new[key]))
        self._write_bloom(new.keys())

    def _write_bloom(self, keys) -> None:
        """The kernel's one-load "maybe protected" filter: a bit per inode number of keys."""
        self._maps["inode_bloom"].update(_u32(0), identity.bloom(keys))

    def seed_processes(self) -> int:
        """Binary state of processes that were running before the exec hook was attached."""
        compiled = self.live or Compiled()
        added = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            exe = procfs.executable(int(name))
            if exe is None:
                continue  # kernel thread, or gone
            state = np.zeros(1, PROC_STATE)[0]
            state["masks"]["as_binary"], state["masks"]["as_parent"] = compiled.binary_masks(exe)
            state["binary"] = exe.encode()[: LPM_DATA - 1]
            try:  # an entry the exec hook wrote meanwhile is fresher: keep it
                self._maps["procs"].update(_u32(int(name)), state.tobytes(), BPF_NOEXIST)
                added += 1
            except BpfError:
                continue
        return added

    def rule_stats(self, slot: int) -> np.void:
        raw = self._maps["stats"].lookup(_u32(slot))
        values = np.frombuffer(raw, dtype=RULE_STATS, count=possible_cpus()) if raw else np.zeros(1, RULE_STATS)
        total = np.zeros(1, RULE_STATS)[0]
        assert RULE_STATS.names is not None  # a structured dtype
        for field in RULE_STATS.names:
            total[field] = values[field].sum()
        return total

    def _clear_slot_counters(self, slot: int) -> None:
        self._maps["stats"].update(_u32(slot), bytes(RULE_STATS.itemsize * possible_cpus()))
        self._maps["rates"].update(_u32(slot), bytes(16))

    def _rewrite_procs(self, new: Compiled, keep_bits: int) -> None:
        procs = self._maps["procs"]
        for key in procs.keys():  # noqa: SIM118 (a Map is not iterable: keys() reads the kernel map)
            raw = procs.lookup(key)
            if raw is None:
                continue  # exited meanwhile
            state = np.frombuffer(raw, dtype=PROC_STATE, count=1)[0].copy()
            as_bin, as_par = new.binary_masks(state["binary"].split(b"\0", 1)[0].decode("utf-8", "replace"))
            state["masks"]["as_binary"] = (int(state["masks"]["as_binary"]) & keep_bits) | as_bin
            state["masks"]["as_parent"] = (int(state["masks"]["as_parent"]) & keep_bits) | as_par
            try:  # BPF_EXIST: a process that exited meanwhile stays gone
                procs.update(key, state.tobytes(), BPF_EXIST)
            except BpfError:
                continue
