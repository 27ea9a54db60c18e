"""The DNS parser on real messages and on hostile bytes: it answers or says None, never raises."""

import dns.message
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbpf.protocols.dns import parse


def test_query_and_answer():
    query = dns.message.make_query("example.otelbpf.test", "A")
    parsed = parse(query.to_wire())
    assert (parsed.name, parsed.qtype, parsed.is_response) == ("example.otelbpf.test", "A", False)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("example.otelbpf.test.", 60, "IN", "A", "10.1.2.3", "10.1.2.4"))
    parsed = parse(reply.to_wire())
    assert parsed.is_response and parsed.rcode == "NOERROR" and parsed.id == query.id
    assert sorted(parsed.answers) == ["10.1.2.3", "10.1.2.4"]  # an rrset has no order


def test_nxdomain():
    query = dns.message.make_query("nope.otelbpf.test", "AAAA")
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.NXDOMAIN)
    assert parse(reply.to_wire()).rcode == "NXDOMAIN"


def test_truncated_capture_still_names_the_question():
    # The kernel copies at most 512 bytes: a long answer section may be cut.
    query = dns.message.make_query("big.otelbpf.test", "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("big.otelbpf.test.", 60, "IN", "A", *[f"10.0.{i}.1" for i in range(60)]))
    wire = reply.to_wire()[:512]
    parsed = parse(wire)
    assert parsed is None or parsed.name == "big.otelbpf.test"


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_hostile_bytes_never_raise(payload):
    parse(payload)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(min_value=0, max_value=200))
def test_mutated_messages_never_raise(noise, at):
    wire = bytearray(dns.message.make_query("mutant.otelbpf.test", "A").to_wire())
    wire[at % len(wire):at % len(wire) + len(noise)] = noise
    parse(bytes(wire))
