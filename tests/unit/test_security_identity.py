"""Protected paths as the kernel's filters see them: identities, the bloom bits, first names."""

from __future__ import annotations

import os

from otelbpf.security import identity
from otelbpf.security.compiler import EVERY_PATH, FIRST_NAME, compile_policies
from otelbpf.security.hooks import HOOKS
from otelbpf.security.policy import parse_policy

FILE_OPEN = HOOKS["file_open"].id


def _compile(paths: str):
    return compile_policies([parse_policy(f"name: p\nrules:\n  - hook: file_open\n    paths: [{paths}]\n", "t")])


def test_kernel_dev_is_mkdev_not_the_stat_encoding():
    st_dev = os.makedev(259, 3)
    assert identity.kernel_dev(st_dev) == (259 << 20) | 3


def test_existing_paths_resolve_to_their_inodes_and_missing_ones_to_none(tmp_path):
    f = tmp_path / "secret"
    f.write_text("x")
    d = tmp_path / "dir"
    d.mkdir()
    compiled = _compile(f'{{op: Equal, values: ["{f}", "{tmp_path}/missing"]}}, {{op: Prefix, values: ["{d}/"]}}')
    keys = {identity.INODE_KEY.unpack(k): mask for k, mask in compiled.inodes.items()}
    st_f, st_d = f.stat(), d.stat()
    assert keys == {
        (FILE_OPEN, identity.ID_FILE, 0, identity.kernel_dev(st_f.st_dev), st_f.st_ino): 1,
        (FILE_OPEN, identity.ID_DIR, 0, identity.kernel_dev(st_d.st_dev), st_d.st_ino): 1,
    }
    conf = compiled.hooks[FILE_OPEN]
    assert conf["filters"] == identity.ID_FILE | identity.ID_DIR  # a missing path is matched by its path


def test_a_file_replaced_by_rename_resolves_to_the_new_inode(tmp_path):
    f = tmp_path / "shadow"
    f.write_text("old")
    compiled = _compile(f'{{op: Equal, values: ["{f}"]}}')
    before = set(compiled.inodes)
    new = tmp_path / "shadow.new"
    new.write_text("new")
    os.rename(new, f)
    assert set(identity.resolve(compiled.identities)) != before
    (key,) = identity.resolve(compiled.identities)
    assert identity.INODE_KEY.unpack(key)[4] == f.stat().st_ino


def test_bloom_has_exactly_the_bits_of_its_inodes():
    keys = [identity.INODE_KEY.pack(1, 1, 0, 8, ino) for ino in (2, 23, 1 << 40)]
    words = identity.bloom(keys)
    assert len(words) == identity.BLOOM_BITS // 8
    bits = {i for i in range(identity.BLOOM_BITS) if words[i // 8] >> (i % 8) & 1}
    assert bits == {identity.bloom_bit(ino) for ino in (2, 23, 1 << 40)}


def test_first_names_let_the_kernel_skip_paths_no_rule_can_match():
    compiled = _compile("{op: Equal, values: [/etc/shadow]}, {op: Prefix, values: [/root/.ssh/, /a-very-long-first-name/]}")
    names = {FIRST_NAME.unpack(k)[1:] for k in compiled.first_names}
    assert names == {(3, b"etc".ljust(16, b"\0")), (4, b"root".ljust(16, b"\0")),
                     (22, b"a-very-long-first-name"[:16])}
    assert not compiled.hooks[FILE_OPEN]["filters"] & EVERY_PATH


def test_rules_without_one_first_name_send_every_path_to_the_tries():
    for paths in ("{op: Postfix, values: [.key]}", "{op: Prefix, values: [/et]}", "{op: Prefix, values: [/]}"):
        assert _compile(paths).hooks[FILE_OPEN]["filters"] & EVERY_PATH, paths


def test_binary_selectors_also_name_the_real_file_behind_a_symlink(tmp_path):
    real = tmp_path / "usr-bin" / "tool"
    real.parent.mkdir()
    real.write_text("")
    (tmp_path / "bin").symlink_to(real.parent)
    link = tmp_path / "bin" / "tool"
    compiled = compile_policies([parse_policy(f"""
name: p
rules:
  - hook: file_open
    binaries: {{op: In, values: ["{link}"]}}
""", "t")])
    # the kernel reports the executed file's path: both names select the rule
    assert compiled.binary_masks(str(link)) == (1, 0)
    assert compiled.binary_masks(str(real)) == (1, 0)
    assert compiled.binary_masks(str(tmp_path / "other")) == (0, 0)
