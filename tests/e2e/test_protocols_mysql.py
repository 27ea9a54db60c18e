"""MySQL protocol exchanges from a real MariaDB (Debian's mariadb-server, started by the
test with its general query log) and real clients (PyMySQL for text queries,
mysql-connector-python for server-side prepared statements), through a recording relay:
every query and execute the server logged is one exchange, in order, with its text."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
import time

import mysql.connector
import pymysql
import pytest

from otelbpf.protocols.l7 import Connection
from otelbpf.protocols.sql import sanitize
from tests.conftest import require_tool, wait_for_port
from tests.l7_relay import Relay, free_port, replay

PREPARED_RUNS = 7
STATEMENTS = [
    "CREATE DATABASE shop",
    "USE shop",
    "CREATE TABLE items (id int PRIMARY KEY, name varchar(40), price decimal(8,2))",
    "INSERT INTO items VALUES (1, 'apple', 1.25)",
    "INSERT INTO items VALUES (2, 'pear', 2.50), (3, 'plum', 3.00)",
    "INSERT INTO items VALUES (4, 'secret-value', 4.00)",
    "SELECT count(*) FROM items",
    "SELECT name FROM items WHERE price > 2 ORDER BY id",
    "UPDATE items SET price = price * 2 WHERE id = 1",
    "SELECT * FROM items WHERE name = 'secret-value'",
    "DELETE FROM items WHERE id = 3",
    "SELECT * FROM no_such_table",  # ER_NO_SUCH_TABLE 1146
    "SELECT max(price) FROM items",
    "CREATE INDEX items_name ON items (name)",
    "SELECT id FROM items WHERE name LIKE 'p%'",
    "BEGIN",
    "INSERT INTO items VALUES (10, 'kiwi', 0.50)",
    "COMMIT",
    "SELECT sum(price) FROM items",
    "CREATE TABLE tags (item int, tag varchar(10))",
    "INSERT INTO tags SELECT id, 'fresh' FROM items",
    "SELECT i.name, t.tag FROM items i JOIN tags t ON t.item = i.id ORDER BY 1",
    "DROP TABLE tags",
]
PREPARED = "SELECT name FROM items WHERE id = %s"
_LOG_LINE = re.compile(  # "[yymmdd hh:mm:ss]   <thread> <command>\t<argument>"
    r"^(?:\d{6}\s+\d\d:\d\d:\d\d)?\s+(\d+) (Connect|Query|Prepare|Execute|Quit|Close stmt|Reset stmt|Init DB)\t?(.*)$")


@pytest.fixture
def mariadb():
    server = require_tool("mariadbd")
    install = require_tool("mariadb-install-db")
    base = tempfile.mkdtemp(prefix="otelbpf-mariadb-")  # the mysql user must reach it
    shutil.chown(base, "mysql", "mysql")
    port = free_port()
    proc = None
    try:
        subprocess.run([install, "--no-defaults", f"--datadir={base}/data", "--user=mysql", "--skip-test-db",
                        "--auth-root-authentication-method=normal"], check=True, capture_output=True, timeout=120)
        proc = subprocess.Popen([server, "--no-defaults", f"--datadir={base}/data", "--user=mysql", f"--port={port}",
                                 "--bind-address=127.0.0.1", f"--socket={base}/mariadb.sock", f"--pid-file={base}/mariadb.pid",
                                 "--general-log=1", f"--general-log-file={base}/general.log", f"--log-error={base}/error.log",
                                 "--innodb-buffer-pool-size=16M", "--skip-log-bin"])
        assert wait_for_port(port, 30), "mariadbd did not start"
        deadline = time.monotonic() + 20
        while True:
            try:
                pymysql.connect(host="127.0.0.1", port=port, user="root", password="").close()
                break
            except pymysql.err.OperationalError:
                assert time.monotonic() < deadline, "mariadbd did not accept connections in 20 s"
                time.sleep(0.1)
        yield port, f"{base}/general.log"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def connection_id(records) -> int:
    """The thread id the server gave this connection, from its greeting."""
    greeting = records[0][2]
    version_end = greeting.index(b"\0", 5)
    return struct.unpack_from("<I", greeting, version_end + 1)[0]


def logged(log_path: str, thread: int) -> list[str]:
    """The statements the server logged running for one connection (queries and executes)."""
    out = []
    with open(log_path) as log:
        for line in log:
            match = _LOG_LINE.match(line.rstrip("\n"))
            if match and int(match.group(1)) == thread and match.group(2) in ("Query", "Execute"):
                out.append(match.group(3))
    return out


def test_every_query_and_execute_is_one_exchange_as_the_server_logged_it(mariadb):
    port, log_path = mariadb
    with Relay(port) as relay:
        text = pymysql.connect(host="127.0.0.1", port=relay.port, user="root", password="", autocommit=True)
        with text.cursor() as cursor:
            for statement in STATEMENTS:
                if "no_such_table" in statement:
                    with pytest.raises(pymysql.err.ProgrammingError, match="1146"):
                        cursor.execute(statement)
                else:
                    cursor.execute(statement)
        text.close()
        relay.wait_idle()
        prepared = mysql.connector.connect(host="127.0.0.1", port=relay.port, user="root", password="", database="shop",
                                           use_pure=True, ssl_disabled=True, autocommit=True)
        cursor = prepared.cursor(prepared=True)
        for i in range(PREPARED_RUNS):
            cursor.execute(PREPARED, (i % 5 + 1,))
            cursor.fetchall()
        with pytest.raises(mysql.connector.errors.ProgrammingError, match="1064"):
            cursor.execute("SELEC %s", (1,))
        cursor.close()
        prepared.close()
        relay.wait_idle()
    assert len(relay.connections) == 2

    # PyMySQL: text queries; the log has them as sent, literals and all.
    records = relay.connections[0]
    exchanges, connection = replay(records)
    assert connection.protocol == "mysql" and dict(connection.counters) == {}
    truth = logged(log_path, connection_id(records))
    keeper = Connection("mysql", keep_literals=True)
    assert [e.attributes["db.query.text"] for d, t, c in records for e in keeper.feed(d, t, c)] == truth
    assert truth[-len(STATEMENTS):] == STATEMENTS  # after the client's own SET NAMES
    assert [(e.attributes["db.query.text"], e.error_type) for e in exchanges if e.error_type] == \
        [("SELECT * FROM no_such_table", "1146")]
    assert all(e.attributes["db.system.name"] == "mariadb" for e in exchanges)
    assert not any("secret-value" in str(e.attributes["db.query.text"]) for e in exchanges)
    after_use = exchanges[len(exchanges) - len(STATEMENTS) + 2:]
    assert {e.attributes["db.namespace"] for e in after_use} == {"shop"}
    assert exchanges[-2].attributes["db.response.returned_rows"] == 4  # the join: apple, pear, secret, kiwi

    # mysql-connector: COM_STMT_PREPARE once, COM_STMT_EXECUTE per run, named by its SQL.
    records = relay.connections[1]
    exchanges, connection = replay(records)
    assert dict(connection.counters) == {}
    truth = logged(log_path, connection_id(records))
    assert [sanitize(line, mysql=True) for line in truth] == [e.attributes["db.query.text"] for e in exchanges
                                                             if not e.error_type]
    executes = [e for e in exchanges if e.attributes.get("db.query.text") == "SELECT name FROM items WHERE id = ?"]
    assert len(executes) == PREPARED_RUNS == len([line for line in truth if line.startswith("SELECT name FROM items")])
    assert [e.attributes.get("db.response.returned_rows", 0) for e in executes] == [1, 1, 0, 1, 0, 1, 1]
    assert [(e.operation, e.error_type) for e in exchanges if e.error_type] == [("", "1064")]  # the failed prepare
    assert all(e.complete and e.end_ns >= e.start_ns for e in exchanges)
