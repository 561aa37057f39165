"""What PL/pgSQL code runs, read from its text."""

from __future__ import annotations

import pytest

from broker.policy.bodies import Code, do_block_code, plpgsql_code, string_literal


def test_do_block_statements_and_expressions() -> None:
    code = do_block_code(
        "declare x text := f1(); begin perform f2(); x := f3(); delete from t; "
        "if f4() then null; end if; execute 'select f5()'; end"
    )
    assert code is not None and code.dynamic == ()
    joined = " | ".join(code.statements)
    for name in ("f1()", "f2()", "f3()", "delete from t", "f4()", "select f5()"):
        assert name in joined


def test_dollar_quotes_inside_the_body() -> None:
    code = do_block_code("begin perform $jitgate$x$jitgate$; end")
    assert code == Code(("SELECT $jitgate$x$jitgate$",), ())


def test_function_parameters_are_known() -> None:
    code = plpgsql_code(
        "create function f(a int) returns int language plpgsql as "
        "$$ begin a := g(a); return a; end $$"
    )
    # the target is kept (its subscripts, if any, run too); "return a" names a variable
    assert code == Code(("SELECT a, g(a)",), ())


def test_code_that_does_not_compile() -> None:
    assert do_block_code("begin garbage; end") is None


def test_every_statement_that_runs_a_string() -> None:
    code = plpgsql_code(
        "create function f(q text) returns setof int language plpgsql as $$ "
        "declare c refcursor; r record; begin "
        "execute q using 1; open c for execute 'select ' || q; return query execute q; "
        "for r in execute format('select %s', q) loop null; end loop; "
        "execute 'select 1'; open c for execute $x$select 2$x$; "
        "return query execute E'select \\'3\\''; for r in execute 'select 4'::text loop end loop; "
        "end $$"
    )
    assert code is not None
    assert code.dynamic == ("q", "'select ' || q", "q", "format('select %s', q)")
    for literal in ("select 1", "select 2", "select '3'", "select 4"):
        assert literal in code.statements


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("'a''b'", "a'b"),
        ("$q$x$q$", "x"),
        ("E'\\n'", "\n"),
        ("''", ""),
        ("'x'::text", "x"),
        ("'a' || 'b'", None),
        ("format('x')", None),
        ("q", None),
        ("'a' from t", None),
        ("'a', 'b'", None),
        ("1", None),
        ("'a'; drop table t", None),
    ],
)
def test_string_literal(expression: str, value: str | None) -> None:
    assert string_literal(expression) == value
