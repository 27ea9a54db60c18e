"""PostgreSQL exchanges from a real server (Debian's postgresql, started by the test with
log_statement=all) and real clients (psycopg, pgbench), through a recording relay: every
statement the server logged is one exchange, in order, with its text and its SQLSTATE."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time

import psycopg
import pytest

from otelbpf.protocols.exchange import Direction
from otelbpf.protocols.l7 import Connection
from tests.conftest import require, wait_for_port
from tests.l7_relay import Relay, free_port, replay

APP = "otelbpf-test"
PREPARED_RUNS = 7
PGBENCH_TRANSACTIONS = 23

# 23 distinct statements: simple protocol (no parameters) and extended (parameters); one
# fails with a known SQLSTATE.
STATEMENTS: list[tuple[str, tuple | None]] = [
    ("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)", None),
    ("INSERT INTO items VALUES (1, 'apple', 1.25)", None),
    ("INSERT INTO items VALUES (%s, %s, %s)", (2, "pear", 2.5)),
    ("INSERT INTO items VALUES (%s, %s, %s), (%s, %s, %s)", (3, "plum", 3, 4, "fig", 4)),
    ("SELECT count(*) FROM items", None),
    ("SELECT name FROM items WHERE price > %s ORDER BY id", (2,)),
    ("UPDATE items SET price = price * 2 WHERE id = %s", (1,)),
    ("UPDATE items SET name = 'secret-value' WHERE id = 4", None),
    ("SELECT * FROM items WHERE name = 'secret-value'", None),
    ("DELETE FROM items WHERE id = %s", (3,)),
    ("SELECT 1/0", None),  # 22012 division_by_zero
    ("SELECT max(price) FROM items", None),
    ("CREATE INDEX items_name ON items (name)", None),
    ("SELECT id FROM items WHERE name LIKE %s", ("p%",)),
    ("BEGIN", None),
    ("INSERT INTO items VALUES (10, 'kiwi', 0.5)", None),
    ("COMMIT", None),
    ("SELECT sum(price) FROM items", None),
    ("CREATE TABLE tags (item int, tag text)", None),
    ("INSERT INTO tags SELECT id, 'fresh' FROM items", None),
    ("SELECT i.name, t.tag FROM items i JOIN tags t ON t.item = i.id ORDER BY 1", None),
    ("TRUNCATE tags", None),
    ("DROP TABLE tags", None),
]
PREPARED = "SELECT name FROM items WHERE id = %s"
BAD_PARSE = "SELEC %s"  # fails at Parse with 42601, in the extended protocol


@pytest.fixture
def postgres():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    require(bool(found), "postgresql is not installed")
    require(os.geteuid() == 0, "starting postgres as its own user needs root")
    bindir = os.path.dirname(found[-1])
    data = tempfile.mkdtemp(prefix="otelbpf-pg-")  # postgres' own user must reach it: not under pytest's 0700 tmp
    shutil.chown(data, "postgres", "postgres")
    port = free_port()
    proc = None
    try:
        subprocess.run([f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                       user="postgres", check=True, capture_output=True)
        log = open(os.path.join(data, "server.log"), "w")
        settings = {"listen_addresses": "127.0.0.1", "unix_socket_directories": data, "log_statement": "all",
                    "log_duration": "on", "log_line_prefix": "%a|", "log_error_verbosity": "verbose", "ssl": "off",
                    "fsync": "off"}
        args = [f"{bindir}/postgres", "-D", data, "-p", str(port)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        proc = subprocess.Popen(args, user="postgres", stderr=log)
        assert wait_for_port(port), "postgres did not start"
        deadline = time.monotonic() + 20
        while True:  # the port opens before the server takes queries ("the database system is starting up")
            try:
                psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", application_name="ready",
                                connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "postgres did not accept connections in 20 s"
                time.sleep(0.1)
        yield bindir, port, os.path.join(data, "server.log")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        shutil.rmtree(data, ignore_errors=True)


def logged(log_path: str, app: str) -> list[tuple[str, str | None]]:
    """(statement, SQLSTATE or None) per statement the server ran or refused, in order."""
    out: list[tuple[str, str | None]] = []
    error: str | None = None
    prefix = f"{app}|"
    with open(log_path) as log:
        for line in log:
            if not line.startswith(prefix):
                continue
            level, _, message = line[len(prefix):].rstrip("\n").partition(":  ")
            if level == "LOG" and (" statement: " in message or " execute " in message):
                out.append((message.split(": ", 2)[-1], None))
            elif level == "ERROR":
                error = message.split(":", 1)[0]
            elif level == "STATEMENT" and error is not None:
                if out and out[-1] == (message, None):
                    out[-1] = (message, error)
                else:  # refused before it ran (a syntax error): logged only as the failed statement
                    out.append((message, error))
                error = None
    return out


def texts(records, keep_literals: bool) -> list[tuple[str, str | None]]:
    connection = Connection("postgresql", keep_literals=keep_literals)
    exchanges = [e for d, t, c in records for e in connection.feed(d, t, c)]
    return [(str(e.attributes.get("db.query.text")), e.error_type) for e in exchanges]


def test_every_statement_is_one_exchange_as_the_server_logged_it(postgres):
    _, port, log_path = postgres
    with Relay(port) as relay:
        conn = psycopg.connect(host="127.0.0.1", port=relay.port, user="postgres", dbname="postgres",
                               application_name=APP, sslmode="prefer", autocommit=True)
        for query, params in STATEMENTS:
            if query == "SELECT 1/0":
                with pytest.raises(psycopg.errors.DivisionByZero):
                    conn.execute(query)
            else:
                conn.execute(query, params)
        for i in range(PREPARED_RUNS):
            conn.execute(PREPARED, (i % 4 + 1,), prepare=True)
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute(BAD_PARSE, (1,))
        conn.close()
        relay.wait_idle()
    [records] = relay.connections
    # sslmode=prefer asks for TLS first; the server (ssl=off) refuses with one 'N'.
    assert records[0][0] is Direction.CLIENT and records[0][2] == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert records[1][0] is Direction.SERVER and records[1][2] == b"N"

    exchanges, connection = replay(records)
    assert connection.protocol == "postgresql" and dict(connection.counters) == {}
    truth = logged(log_path, APP)
    assert len(truth) == len(STATEMENTS) + PREPARED_RUNS + 1
    assert texts(records, keep_literals=True) == truth

    assert [(e.operation, e.error_type) for e in exchanges if e.error_type] == [("SELECT", "22012"), ("", "42601")]
    prepared = [e for e in exchanges if e.attributes.get("db.query.text") == "SELECT name FROM items WHERE id = $1"]
    assert len(prepared) == PREPARED_RUNS
    assert [e.attributes["db.response.returned_rows"] for e in prepared] == [1, 1, 0, 1, 1, 1, 0]  # id 3 was deleted
    assert all(e.attributes["db.collection.name"] == "items" and e.attributes["db.namespace"] == "postgres"
               for e in prepared)
    sanitized = [e.attributes.get("db.query.text", "") for e in exchanges]
    assert not any("secret-value" in str(text) or "apple" in str(text) for text in sanitized)
    assert "SELECT * FROM items WHERE name = ?" in sanitized
    assert all(e.complete and e.end_ns >= e.start_ns for e in exchanges)


def test_pgbench_prepared_transactions(postgres):
    bindir, port, log_path = postgres
    env = dict(os.environ, PGHOST="127.0.0.1", PGUSER="postgres", PGDATABASE="postgres", PGAPPNAME="pgbench")
    subprocess.run([f"{bindir}/pgbench", "-i", "-s", "1", "-q", "-p", str(port)], env=env, check=True, capture_output=True)
    with Relay(port) as relay:
        done = subprocess.run([f"{bindir}/pgbench", "-n", "-S", "-M", "prepared", "-c", "1", "-t", str(PGBENCH_TRANSACTIONS),
                               "-p", str(relay.port)], env=env, check=True, capture_output=True, text=True, timeout=60)
        relay.wait_idle()
    assert f"processed: {PGBENCH_TRANSACTIONS}/{PGBENCH_TRANSACTIONS}" in done.stdout
    truth = [entry for entry in logged(log_path, "pgbench") if "pgbench_accounts WHERE aid" in entry[0]]
    assert len(truth) == PGBENCH_TRANSACTIONS
    got: list[tuple[str, str | None]] = []
    for records in relay.connections:
        got += [entry for entry in texts(records, keep_literals=True) if "pgbench_accounts WHERE aid" in entry[0]]
    assert got == truth
    assert all(replay(records)[1].counters == {} for records in relay.connections)
