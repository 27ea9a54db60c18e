"""DNS messages from raw UDP payloads, through dnspython's wire-format parser.

parse() never raises: bytes that are not a DNS message give None, so a sensor can count
them and move on.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype


@dataclass(frozen=True, slots=True)
class DnsMessage:
    id: int
    is_response: bool
    name: str          # first question, without the trailing dot
    qtype: str         # "A", "AAAA", ...
    rcode: str         # "NOERROR", "NXDOMAIN", ...
    answers: tuple[str, ...]  # A/AAAA/CNAME... values of the answer section


def parse(payload: bytes) -> DnsMessage | None:
    try:
        msg = dns.message.from_wire(payload, ignore_trailing=True, one_rr_per_rrset=True)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
        return None
    if not msg.question:
        return None
    question = msg.question[0]
    answers = tuple(rd.to_text() for rrset in msg.answer for rd in rrset)
    return DnsMessage(
        id=msg.id,
        is_response=bool(msg.flags & dns.flags.QR),
        name=question.name.to_text(omit_final_dot=True),
        qtype=dns.rdatatype.to_text(question.rdtype),
        rcode=dns.rcode.to_text(msg.rcode()),
        answers=answers,
    )
