"""SQL text for db.query.text and a query's operation and table, without a SQL parser.

sanitize() turns literals into `?` (strings, numbers, hex and bit strings, dollar-quoted
bodies), as the semantic conventions ask of db.query.text by default; comments go too, since
they can carry values. Identifiers, keywords and placeholders ($1, ?, %s) stay. The scan is a
single pass over the text; a literal cut by the capture becomes `?` like a whole one.
"""

from __future__ import annotations

import re

MAX_QUERY_TEXT = 2048  # characters kept of a query's sanitized text

_TOKENS = r"""
    (?P<comment>--[^\n]*|/\*.*?(?:\*/|$)HASH)
  | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$.*?(?:\$(?P=tag)?\$|$))
  | (?P<string>[EeBbXxNn]?'(?:[^'\\]|''|\\.)*(?:'|$))
  | (?P<dquote>"(?:[^"\\]|""|\\.)*(?:"|$))
  | (?P<ident>`[^`]*`?|[A-Za-z_][A-Za-z_0-9$]*)
  | (?P<param>\$\d+|:[A-Za-z_]\w*|%\(\w+\)s|%s)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    """
_TOKEN = re.compile(_TOKENS.replace("HASH", ""), re.VERBOSE | re.DOTALL)
_TOKEN_MYSQL = re.compile(_TOKENS.replace("HASH", r"|\#[^\n]*"), re.VERBOSE | re.DOTALL)  # '#' starts a comment in MySQL only
_SPACE = re.compile(r"\s+")
# Statement keywords of PostgreSQL and MySQL: a first word not among them (a typo, a
# fragment) names no operation.
_KEYWORDS = """
    SELECT INSERT UPDATE DELETE MERGE REPLACE UPSERT CREATE DROP ALTER TRUNCATE RENAME WITH VALUES TABLE
    BEGIN START COMMIT ROLLBACK END ABORT SAVEPOINT RELEASE SET SHOW USE GRANT REVOKE EXPLAIN ANALYZE
    VACUUM COPY CALL EXECUTE PREPARE DEALLOCATE DECLARE FETCH MOVE CLOSE LOCK UNLOCK LISTEN NOTIFY
    UNLISTEN DISCARD RESET CHECKPOINT CLUSTER REINDEX COMMENT DO LOAD DESCRIBE DESC HANDLER REFRESH
    IMPORT OPTIMIZE CHECKSUM FLUSH KILL PURGE XA
"""
KEYWORDS = frozenset(_KEYWORDS.split())
_FIRST_WORD = re.compile(r"\s*(?:/\*.*?\*/\s*|--[^\n]*\n\s*)*\(*\s*([A-Za-z]+)", re.DOTALL)
# The table an operation works on, when one name follows its keyword (schema-qualified or quoted).
_NAME = r"((?:[A-Za-z_][\w$]*|\"[^\"]+\"|`[^`]+`)(?:\.(?:[A-Za-z_][\w$]*|\"[^\"]+\"|`[^`]+`))?)"
_AFTER = r"WHERE\b|ORDER\b|GROUP\b|LIMIT\b|FOR\b"  # what may follow a lone table name (and its alias)
_COLLECTION = {
    "SELECT": re.compile(
        r"\bFROM\s+" + _NAME + r"\s*(?:$|;|\)|" + _AFTER + r"|AS\b|[A-Za-z_]\w*\s*(?:$|;|" + _AFTER + "))", re.I),
    "INSERT": re.compile(r"\bINTO\s+" + _NAME, re.I),
    "REPLACE": re.compile(r"\bINTO\s+" + _NAME, re.I),
    "UPDATE": re.compile(r"^\s*UPDATE\s+(?:ONLY\s+)?" + _NAME, re.I),
    "DELETE": re.compile(r"\bFROM\s+(?:ONLY\s+)?" + _NAME, re.I),
    "TRUNCATE": re.compile(r"^\s*TRUNCATE\s+(?:TABLE\s+)?" + _NAME, re.I),
    "CREATE": re.compile(r"^\s*CREATE\s+(?:TEMP(?:ORARY)?\s+|UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME, re.I),
    "DROP": re.compile(r"^\s*DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?" + _NAME, re.I),
    "ALTER": re.compile(r"^\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?" + _NAME, re.I),
}


def sanitize(query: str, *, mysql: bool = False) -> str:
    """The query with every literal replaced by `?`, comments removed, spaces collapsed.

    mysql: double-quoted text is a string there (not an identifier, unless ANSI_QUOTES)."""
    out: list[str] = []
    pos = 0
    for match in (_TOKEN_MYSQL if mysql else _TOKEN).finditer(query):
        out.append(query[pos:match.start()])
        pos = match.end()
        kind = match.lastgroup
        if kind == "comment":
            out.append(" ")
        elif kind in ("dollar", "string", "number") or (kind == "dquote" and mysql):
            out.append("?")
        else:
            out.append(match.group())
    out.append(query[pos:])
    return _SPACE.sub(" ", "".join(out)).strip()[:MAX_QUERY_TEXT]


def query_text(query: str, *, keep_literals: bool, mysql: bool = False) -> str:
    """db.query.text: sanitized unless the user asked to keep literals."""
    if keep_literals:
        return _SPACE.sub(" ", query).strip()[:MAX_QUERY_TEXT]
    return sanitize(query, mysql=mysql)


def operation_name(query: str) -> str:
    """The statement's first keyword, upper case (SELECT, INSERT, BEGIN...); "" when none."""
    match = _FIRST_WORD.match(query)
    word = match.group(1).upper() if match else ""
    return word if word in KEYWORDS else ""


def collection_name(query: str, operation: str | None = None) -> str | None:
    """db.collection.name when the statement names exactly one table plainly; else None."""
    operation = operation or operation_name(query)
    pattern = _COLLECTION.get(operation)
    if pattern is None:
        return None
    if operation == "SELECT" and re.search(r"\bJOIN\b|\bFROM\s+[^;]*,", query, re.I):
        return None  # several tables: no single collection
    match = pattern.search(query)
    if match is None:
        return None
    return match.group(1).replace('"', "").replace("`", "")
