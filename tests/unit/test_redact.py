import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbpf.pipeline.redact import DEFAULT_SECRET_KEYWORDS, REDACTED, ArgRedactor, redact_args


@pytest.mark.parametrize(
    "args, expected",
    [
        (["app", "--password=hunter2"], ["app", "--password=REDACTED"]),
        (["app", "--password", "hunter2", "--port", "80"], ["app", "--password", REDACTED, "--port", "80"]),
        (["app", "-password", "x"], ["app", "-password", REDACTED]),  # Go-style single dash
        (["app", "token=abc"], ["app", "token=REDACTED"]),
        (["app", "--api-key", "k", "--apikey=k2", "--api_key=k3"],
         ["app", "--api-key", REDACTED, "--apikey=REDACTED", "--api_key=REDACTED"]),
        (["app", "--secret", "s"], ["app", "--secret", REDACTED]),
        (["app", "--client-secret=s", "--db-password=p"], ["app", "--client-secret=REDACTED", "--db-password=REDACTED"]),
        (["env", "AWS_SECRET_ACCESS_KEY=abc", "GITHUB_TOKEN=t", "aws"],
         ["env", "AWS_SECRET_ACCESS_KEY=REDACTED", "GITHUB_TOKEN=REDACTED", "aws"]),
        (["app", "access_key=1", "private_key=2", "credentials=3", "auth=4", "passwd=5", "pwd=6"],
         ["app", "access_key=REDACTED", "private_key=REDACTED", "credentials=REDACTED", "auth=REDACTED",
          "passwd=REDACTED", "pwd=REDACTED"]),
        (["app", "--PASSWORD=x", "--Api-Key", "y"], ["app", "--PASSWORD=REDACTED", "--Api-Key", REDACTED]),
        (["curl", "-H", "Authorization: Bearer abc.def"], ["curl", "-H", "Authorization: Bearer REDACTED"]),
        (["curl", "-H", "authorization:secretvalue"], ["curl", "-H", "authorization:REDACTED"]),
        (["curl", "--header=X-Api-Key: 123"], ["curl", "--header=X-Api-Key: REDACTED"]),
        (["git", "clone", "https://bob:pw@github.com/x.git"], ["git", "clone", "https://bob:REDACTED@github.com/x.git"]),
        (["redis-cli", "-u", "redis://:pw@localhost:6379"], ["redis-cli", "-u", "redis://:REDACTED@localhost:6379"]),
        (["curl", "https://h/p?access_token=t&page=2"], ["curl", "https://h/p?access_token=REDACTED&page=2"]),
        (["psql", "host=db user=bob password=pw"], ["psql", "host=db user=bob password=REDACTED"]),
        (["java", "-Djavax.net.ssl.keyStorePassword=changeit"], ["java", "-Djavax.net.ssl.keyStorePassword=REDACTED"]),
        (["app", "--dbpassword", "x", "--githubtoken=y"], ["app", "--dbpassword", REDACTED, "--githubtoken=REDACTED"]),
        # tool-specific short options
        (["/usr/bin/mysql", "-uroot", "-phunter2", "-h", "db"], ["/usr/bin/mysql", "-uroot", "-pREDACTED", "-h", "db"]),
        (["sshpass", "-p", "hunter2", "ssh", "host"], ["sshpass", "-p", REDACTED, "ssh", "host"]),
        (["curl", "-u", "bob:pw", "http://h"], ["curl", "-u", "bob:REDACTED", "http://h"]),
        (["curl", "-ubob:pw", "--proxy-user", "p:q"], ["curl", "-ubob:REDACTED", "--proxy-user", "p:REDACTED"]),
    ],
)
def test_secrets_are_redacted(args, expected):
    assert redact_args(args) == expected


@pytest.mark.parametrize(
    "args",
    [
        ["ssh", "-p", "22", "host"],  # -p is a port outside the known tools
        ["docker", "run", "-p", "8080:80", "-u", "1000:1000", "nginx"],
        ["app", "--password-file", "/run/secrets/pw", "--token-type", "bearer", "--auth-url", "https://idp"],
        ["app", "--no-auth", "positional"],
        ["app", "--author=me", "--tokenizer=bert", "--authority", "x"],
        ["env", "PWD=/tmp", "AWS_ACCESS_KEY_ID=AKIA123", "ls"],
        ["app", "--password"],  # no value follows
        ["app", "--password", "--verbose"],  # the next argument is another flag
        ["app", "--password="],  # empty value: nothing to hide
        ["curl", "-u", "bob", "https://example.com:8443/path?page=2"],
        ["nginx", "-g", "daemon off;"],
        ["python3", "-c", "print('x: y')"],
        ["ls", "-la", "/home/user"],
        [],
    ],
)
def test_innocent_args_are_kept(args):
    assert redact_args(args) == args


def test_custom_keywords():
    redactor = ArgRedactor(["pin"])
    assert redactor(["app", "--pin=1234", "--password=x"]) == ["app", "--pin=REDACTED", "--password=x"]


def test_is_secret_key():
    r = ArgRedactor()
    assert r.is_secret_key("AWS_SECRET_ACCESS_KEY")
    assert r.is_secret_key("--oauth-token")
    assert not r.is_secret_key("AWS_ACCESS_KEY_ID")
    assert not r.is_secret_key("--oauth")  # "auth" matches whole words only


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text()))
def test_never_raises_and_keeps_length(args):
    out = redact_args(args)
    assert len(out) == len(args)
    assert all(isinstance(a, str) for a in out)


_INNOCENT = st.text(alphabet=string.ascii_letters + string.digits + "/._-,+", max_size=20).filter(
    lambda s: not any(
        part in s.lower() for k in DEFAULT_SECRET_KEYWORDS for part in (k, k.replace("_", ""), k.replace("_", "-"))
    )
    and "pass" not in s.lower()
    and "key" not in s.lower()
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_INNOCENT, max_size=8), st.sampled_from(["app", "/bin/ls", "ssh", "docker"]))
def test_non_secret_args_unchanged(args, tool):
    argv = [tool, *args]
    assert redact_args(argv) == argv


_SECRET_VALUE = st.text(alphabet=string.ascii_letters + string.digits + "!$%^*()[]{}~", min_size=6, max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["password", "db_password", "api-key", "SECRET", "token", "AWS_SECRET_ACCESS_KEY"]),
    _SECRET_VALUE,
    st.sampled_from(["--{k}={v}", "{k}={v}", "https://u:{v}@h/?{k}={v}", "{k}: {v}"]),
)
def test_secret_value_never_survives(key, value, form):
    arg = form.format(k=key, v=value)
    out = redact_args(["app", arg])
    # What is left is the form with its keys: the value may only appear where it is part of a key.
    assert out[1].replace(REDACTED, "") == form.format(k=key, v="").replace("{v}", "")
    assert REDACTED in out[1]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["--password", "--api-key", "--secret", "--token"]), _SECRET_VALUE.filter(lambda v: v[0] != "-"))
def test_secret_in_next_arg_never_survives(flag, value):
    assert redact_args(["app", flag, value]) == ["app", flag, REDACTED]


@pytest.mark.parametrize("arg", ["a" * 65536, "x://" + "a" * 65536, "a-" * 32768, "?a=" * 20000])
def test_long_args_take_linear_time(arg):
    # max_args_bytes allows 32 KiB; a quadratic scan of 64 KiB takes seconds, a linear one ms.
    started = time.perf_counter()
    redact_args(["app", arg])
    assert time.perf_counter() - started < 1.0
