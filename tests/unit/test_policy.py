"""Policy validation (errors name file, line, field, reason) and compilation to map contents."""

from __future__ import annotations

from pathlib import Path

import pytest

from otelbpf.security.compiler import GENERATION_SLOTS, compile_policies
from otelbpf.security.policy import PolicyError, load_policy, parse_policy

POLICIES = Path(__file__).resolve().parents[2] / "src" / "otelbpf" / "policies"


def _error(text: str) -> str:
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, "bad.yaml")
    return str(exc.value)


def test_unknown_hook_names_file_line_and_hooks():
    msg = _error("name: p\nrules:\n  - hook: kprobe_open\n")
    assert "bad.yaml" in msg and "line 3" in msg and "rules.0.hook" in msg and "unknown hook 'kprobe_open'" in msg
    assert "file_open" in msg


def test_bad_cidr():
    msg = _error("name: p\nrules:\n  - hook: connect\n    addresses:\n      op: In\n      values: [10.0.0.0/33]\n")
    assert "line 6" in msg and "rules.0.addresses.values" in msg and "'10.0.0.0/33' is not a CIDR" in msg


def test_bad_operator():
    msg = _error("name: p\nrules:\n  - hook: file_open\n    paths: [{op: Contains, values: [/etc]}]\n")
    assert "line 4" in msg and "rules.0.paths.0.op" in msg and "'Equal', 'Prefix' or 'Postfix' (got 'Contains')" in msg


def test_too_many_values_for_the_map():
    ports = ", ".join(str(p) for p in range(1, 12))
    msg = _error(f"name: p\nrules:\n  - hook: connect\n    ports: [{ports}]\n")
    assert "rules.0.ports" in msg and "at most 8" in msg


def test_too_many_rules_across_policies():
    rule = "  - hook: file_open\n    paths: [{op: Equal, values: [/x]}]\n"
    policy = parse_policy("name: p\nrules:\n" + rule * (GENERATION_SLOTS + 1), "many.yaml")
    with pytest.raises(PolicyError, match=f"too many rules.*holds {GENERATION_SLOTS}"):
        compile_policies([policy])


def test_override_is_refused_with_the_reason():
    msg = _error("name: p\nrules:\n  - hook: file_open\n    action: override\n")
    assert "kprobes" in msg and "LSM" in msg


def test_argument_that_does_not_fit_the_hook():
    msg = _error("name: p\nrules:\n  - hook: exec\n    ports: [22]\n")
    assert "ports does not apply to hook exec" in msg


def test_relative_prefix_is_refused_postfix_allowed():
    assert "absolute path" in _error("name: p\nrules:\n  - hook: file_open\n    paths: [{op: Prefix, values: [etc/]}]\n")
    parse_policy("name: p\nrules:\n  - hook: file_open\n    paths: [{op: Postfix, values: [.key]}]\n", "ok")


def test_unknown_field_and_bad_yaml():
    assert "line 4" in _error("name: p\nrules:\n  - hook: exec\n    colour: red\n")
    assert "invalid YAML" in _error("name: p\nrules: [\n")


def test_unavailable_hook_is_refused_with_reason():
    policy = parse_policy("name: p\nrules:\n  - hook: module_load\n", "m.yaml")
    with pytest.raises(PolicyError, match="module_load cannot run here: no tracepoint"):
        compile_policies([policy], unavailable_hooks={"module_load": "no tracepoint"})


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_policies_are_valid(path):
    compile_policies([load_policy(path)])


def test_trie_values_include_shorter_prefixes():
    policy = parse_policy("""
name: p
rules:
  - hook: file_open
    paths: [{op: Prefix, values: [/etc/]}]
  - hook: file_open
    paths: [{op: Equal, values: [/etc/shadow]}]
""", "t")
    c = compile_policies([policy])
    assert c.paths[(b"\x01/etc/shadow\0", 13 * 8)] == 0b11
    assert c.paths[(b"\x01/etc/", 6 * 8)] == 0b01


def test_enforce_off_turns_kills_into_posts_and_generations_use_their_slots():
    policy = parse_policy("name: p\nrules:\n  - hook: exec\n    action: sigkill\n", "t")
    off = compile_policies([policy], first_slot=GENERATION_SLOTS)
    assert off.infos[GENERATION_SLOTS].action == "post"
    assert off.infos[GENERATION_SLOTS].requested_action == "sigkill"
    assert compile_policies([policy], enforce=True).infos[0].action == "sigkill"


def test_binary_selectors_precomputed_per_binary():
    policy = parse_policy("""
name: p
rules:
  - hook: file_open
    binaries: {op: Prefix, values: [/usr/bin/]}
  - hook: file_open
    parent_binaries: {op: In, values: [/usr/bin/bash]}
""", "t")
    c = compile_policies([policy])
    assert c.binary_masks("/usr/bin/bash") == (0b01, 0b10)
    assert c.binary_masks("/usr/bin/cat") == (0b01, 0)
    assert c.binary_masks("/bin/cat") == (0, 0)
