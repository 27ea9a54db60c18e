"""db.query.text sanitizing and the operation/table read from SQL text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbpf.protocols.sql import collection_name, operation_name, query_text, sanitize


@pytest.mark.parametrize(("query", "expected"), [
    ("SELECT * FROM users WHERE id = 42 AND name = 'O''Brien'", "SELECT * FROM users WHERE id = ? AND name = ?"),
    ("insert into t (a, b) values (1.5e3, E'x\\'y') -- secret", "insert into t (a, b) values (?, ?)"),
    ("SELECT $$dollar body$$, $tag$x$tag$ FROM t WHERE a = $1", "SELECT ?, ? FROM t WHERE a = $1"),
    ('UPDATE "Users" SET flags = 0x1F, b = X\'0A\' /* why */ WHERE c = %s', 'UPDATE "Users" SET flags = ?, b = ? WHERE c = %s'),
    ("SELECT col1, t2.x3 FROM t2", "SELECT col1, t2.x3 FROM t2"),
    ("SELECT 'cut off by the captu", "SELECT ?"),
])
def test_literals_become_placeholders(query, expected):
    assert sanitize(query) == expected


def test_mysql_double_quotes_and_hash_comments():
    assert sanitize('SELECT "secret" FROM t # tail', mysql=True) == "SELECT ? FROM t"
    assert sanitize('SELECT "column" FROM t') == 'SELECT "column" FROM t'  # an identifier in PostgreSQL


def test_keep_literals_only_collapses_spaces():
    assert query_text("SELECT  'a'\n FROM t", keep_literals=True) == "SELECT 'a' FROM t"


@pytest.mark.parametrize(("query", "operation", "table"), [
    ("select name from items where id = 1", "SELECT", "items"),
    ("  /* hint */ INSERT INTO public.items VALUES (1)", "INSERT", "public.items"),
    ("UPDATE items SET a = 1", "UPDATE", "items"),
    ("DELETE FROM `shop`.`items` WHERE 1", "DELETE", "shop.items"),
    ("SELECT a FROM x JOIN y ON x.i = y.i", "SELECT", None),
    ("SELECT a FROM x, y", "SELECT", None),
    ("(SELECT 1)", "SELECT", None),
    ("SELEC oops", "", None),
    ("BEGIN", "BEGIN", None),
])
def test_operation_and_collection(query, operation, table):
    assert operation_name(query) == operation
    assert collection_name(query) == table


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_any_text_sanitizes_without_raising_and_keeps_no_quoted_literal(text):
    out = sanitize(text)
    assert len(out) <= len(text) + 1 or "?" in out
    sanitize(text, mysql=True)
    operation_name(text)
    collection_name(text)
