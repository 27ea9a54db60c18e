"""The HTTP/1.x head parser: known messages, pipelining, truncation, and fuzzing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from otelbpf.protocols import http1

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_request_line_and_wanted_headers():
    data = (b"GET /users/42?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: curl/7.88\r\n"
            b"traceparent: " + TRACEPARENT.encode() + b"\r\nAccept: */*\r\n\r\n")
    [r] = http1.parse_requests(data)
    assert (r.method, r.target, r.version) == ("GET", "/users/42?x=1", "1.1")
    assert (r.host, r.user_agent, r.traceparent) == ("example.com:8080", "curl/7.88", TRACEPARENT)
    assert http1.split_target(r.target) == ("/users/42", "x=1")


def test_pipelined_requests_with_bodies_are_all_found():
    data = (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
            b"HEAD /c HTTP/1.0\r\n\r\n")
    assert [(r.method, r.target, r.version) for r in http1.parse_requests(data)] == [
        ("GET", "/a", "1.1"), ("POST", "/b", "1.1"), ("HEAD", "/c", "1.0")]


def test_truncated_head_keeps_the_request_line_and_complete_headers():
    data = b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: cut-he"
    [r] = http1.parse_requests(data)
    assert r.host == "a" and r.user_agent is None


def test_responses_informational_chunked_and_pipelined():
    assert [r.status for r in http1.parse_responses(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n\r\n")] \
        == [100, 201]
    assert http1.parse_responses(b"HTTP/1.1 100 Continue\r\n\r\n")[0].informational
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert [r.status for r in http1.parse_responses(chunked)] == [200]
    two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert [r.status for r in http1.parse_responses(two)] == [200, 404]
    assert http1.parse_responses(b"HTTP/1.0 204 No Content\r\n\r\n")[0].version == "1.0"


def test_not_http_gives_nothing():
    for data in (b"", b"\x16\x03\x01\x02\x00", b"GET", b"GET / HTTP/2.0\r\n\r\n", b"HTTP/2 200\r\n"):
        assert http1.parse_requests(data) == []
        assert http1.parse_responses(data) == []


def test_method_attribute_and_route_guess():
    assert http1.method_attribute("GET") == "GET"
    assert http1.method_attribute("PURGE") == "_OTHER"
    assert http1.route_of("/users/42/orders/550e8400-e29b-41d4-a716-446655440000") == "/users/{id}/orders/{id}"
    assert http1.route_of("/blob/9f86d081884c7d659a2feaa0c55ad015") == "/blob/{id}"
    assert http1.route_of("/static/app.css") == "/static/app.css"
    assert http1.route_of("") == "/"
    assert http1.split_target("http://h:1/p?q") == ("/p", "q")


def test_traceparent():
    ctx = http1.parse_traceparent(TRACEPARENT)
    assert ctx.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert ctx.parent_id.hex() == "b7ad6b7169203331" and ctx.sampled
    for bad in (None, "", "00-" + "0" * 32 + "-b7ad6b7169203331-01", "ff-" + TRACEPARENT[3:], "00-zz-yy-01"):
        assert http1.parse_traceparent(bad) is None


http_like = st.builds(
    lambda start, rest: start + rest,
    st.sampled_from([b"GET ", b"POST ", b"HTTP/1.1 ", b"HEAD / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b""]),
    st.binary(max_size=600),
)


@settings(max_examples=3000, deadline=None)
@given(http_like)
def test_fuzz_never_raises(data):
    for request in http1.parse_requests(data):
        http1.route_of(http1.split_target(request.target)[0])
        http1.parse_traceparent(request.traceparent)
    http1.parse_responses(data)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=12), max_size=6))
def test_fuzz_route_has_as_many_segments_as_the_path(segments):
    path = "/" + "/".join(segments)
    assert http1.route_of(path).count("/") == path.count("/")
