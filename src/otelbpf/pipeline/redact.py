"""Redaction of secrets in process arguments before they leave the agent.

Each argument keeps its place (the output has as many items as the input); only the secret
part of it becomes REDACTED. What counts as a secret:

- a key that names a secret (see "key match" below) with its value:
  ``--password=x``, ``-password x`` / ``--api-key x`` (the next argument, unless it looks
  like another flag), ``token=x``, ``AWS_SECRET_ACCESS_KEY=x``, and key=value pairs inside
  an argument after ``?``, ``&``, ``;`` or whitespace (``https://h/p?token=x``,
  ``"host=db password=x"``);
- header-like arguments ``Authorization: Bearer x`` (the scheme word stays),
  ``Proxy-Authorization: ...``, ``Cookie: ...`` and ``<secret key>: value``;
- the password of a URL with credentials, ``scheme://user:pass@host`` -> ``user:REDACTED``;
- short options only for the tools known to use them for passwords, since elsewhere ``-p``
  is a port and ``-u`` a user: ``mysql -pX`` (and the other MySQL/MariaDB clients),
  ``sshpass -p X``, ``curl -u user:pass`` / ``--user`` / ``--proxy-user`` (keeps the user).
  The tool is the basename of the first argument; wrappers such as sudo are not looked
  through.

Key match (case-insensitive): the key is split into words at ``-``, ``_``, ``.`` and
camelCase boundaries; it is a secret when a keyword's words appear in it
(``db_password``, ``keyStorePassword``, ``AWS_SECRET_ACCESS_KEY``), or when one of its words
ends with a keyword of five letters or more, or its plural (``dbpassword``, ``githubtoken``,
``credentials``). To avoid false positives, keys whose last word names something about the
secret rather than the secret (``--password-file``, ``--token-type``, ``AWS_ACCESS_KEY_ID``,
``--auth-url``), negations (``--no-auth``) and the shell's ``PWD=`` are not secrets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

REDACTED = "REDACTED"

DEFAULT_SECRET_KEYWORDS: tuple[str, ...] = (
    "password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "api-key",
    "access_key", "private_key", "credential", "auth",
)  # fmt: skip

# The last word of keys that describe a secret without being one.
_NOT_SECRET_LAST_WORDS = frozenset(
    ["file", "path", "dir", "id", "name", "type", "url", "uri", "endpoint", "host", "port", "user", "username",
     "login", "method", "mode", "length", "len", "size", "timeout", "ttl", "expiry", "enabled", "required",
     "prompt", "command", "cmd", "env"]
)
_HEADERS_ALWAYS_SECRET = frozenset({"authorization", "proxy-authorization", "cookie"})
_MYSQL_CLIENTS = frozenset(
    ["mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlshow", "mysqlcheck", "mysqlpump", "mysqlslap",
     "mariadb", "mariadb-dump", "mariadb-admin", "mariadb-import", "mariadb-show", "mariadb-check"]
)
_CURL_USER_OPTIONS = frozenset({"-u", "--user", "-U", "--proxy-user"})

_CAMEL_BOUNDARY = re.compile(r"([a-z0-9])([A-Z])")
_WORD_SEPARATORS = re.compile(r"[-_.]+")
_LEADING_KEY_VALUE = re.compile(r"^(-*[A-Za-z][A-Za-z0-9_.\-]*)=(.*)$", re.S)
_HEADER = re.compile(r"^([A-Za-z][A-Za-z0-9_\-]*)(\s*:\s*)(.*)$", re.S)
# The lookbehind starts a scheme only where a run of scheme characters starts: linear time.
_URL_PASSWORD = re.compile(r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):([^@/\s]+)@")
_EMBEDDED_KEY_VALUE = re.compile(r"(?<=[?&;\s])([A-Za-z][A-Za-z0-9_.\-]*)=([^&;\s#]*)")


def _words(key: str) -> tuple[str, ...]:
    key = _CAMEL_BOUNDARY.sub(r"\1_\2", key.lstrip("-")).lower()
    return tuple(w for w in _WORD_SEPARATORS.split(key) if w)


class ArgRedactor:
    """Redacts process arguments; `keywords` replaces the default list of secret key words."""

    def __init__(self, keywords: Iterable[str] = DEFAULT_SECRET_KEYWORDS) -> None:
        self._keywords = [_words(k) for k in keywords if _words(k)]
        # Long single-word keywords also match as a word's suffix: "dbpassword".
        long_words = [kw[0] for kw in self._keywords if len(kw) == 1 and len(kw[0]) >= 5]
        self._suffixes = tuple(s for word in long_words for s in (word, word + "s"))

    def is_secret_key(self, key: str) -> bool:
        if key == "PWD":  # the shell's working directory, not a password
            return False
        words = _words(key)
        if not words or words[0] == "no" or words[-1] in _NOT_SECRET_LAST_WORDS:
            return False
        for kw in self._keywords:
            n = len(kw)
            if any(words[i : i + n] == kw for i in range(len(words) - n + 1)):
                return True
        return any(w.endswith(self._suffixes) for w in words)

    def __call__(self, args: list[str]) -> list[str]:
        tool = os.path.basename(args[0]) if args else ""
        out: list[str] = []
        pending = None  # what the previous flag says about this argument, if it is a value
        for arg in args:
            if pending == "secret" and not arg.startswith("-"):
                out.append(REDACTED)
            elif pending == "credentials":
                out.append(_redact_after_colon(arg))
            else:
                out.append(self._redact_one(tool, arg))
            pending = self._value_kind(tool, arg)
        return out

    def _value_kind(self, tool: str, arg: str) -> str | None:
        """What the argument after `arg` holds: "secret", "credentials" (curl's user:pass) or None."""
        if tool == "curl" and arg in _CURL_USER_OPTIONS:
            return "credentials"
        if tool == "sshpass" and arg == "-p":
            return "secret"
        if arg.startswith("-") and "=" not in arg and self.is_secret_key(arg):
            return "secret"
        return None

    def _redact_one(self, tool: str, arg: str) -> str:
        if tool in _MYSQL_CLIENTS and arg.startswith("-p") and len(arg) > 2:
            return "-p" + REDACTED
        if tool == "sshpass" and arg.startswith("-p") and len(arg) > 2:
            return "-p" + REDACTED
        if tool == "curl" and arg.startswith("-u") and len(arg) > 2:
            return "-u" + _redact_after_colon(arg[2:])
        leading = _LEADING_KEY_VALUE.match(arg)
        if leading:
            key, value = leading.groups()
            if self.is_secret_key(key):
                return f"{key}={REDACTED}" if value else arg
            return f"{key}={self._redact_inside(value)}"
        return self._redact_inside(arg)

    def _redact_inside(self, text: str) -> str:
        header = _HEADER.match(text)
        if header:
            name, sep, value = header.groups()
            if value and (name.lower() in _HEADERS_ALWAYS_SECRET or self.is_secret_key(name)):
                scheme, space, credentials = value.partition(" ")
                if name.lower().endswith("authorization") and space and credentials.strip():
                    return f"{name}{sep}{scheme} {REDACTED}"
                return f"{name}{sep}{REDACTED}"
        text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
        return _EMBEDDED_KEY_VALUE.sub(
            lambda m: f"{m[1]}={REDACTED}" if m[2] and self.is_secret_key(m[1]) else m[0], text
        )


def _redact_after_colon(credentials: str) -> str:
    user, colon, password = credentials.partition(":")
    return f"{user}:{REDACTED}" if colon and password else credentials


_default = ArgRedactor()


def redact_args(args: list[str]) -> list[str]:
    """Replace secret values in `args` with REDACTED using the default keywords."""
    return _default(args)
