"""SQL found inside PL/pgSQL code."""

from __future__ import annotations

from broker.policy.bodies import do_block_sql, plpgsql_sql


def test_do_block_statements_and_expressions() -> None:
    found = do_block_sql(
        "declare x text := f1(); begin perform f2(); x := f3(); delete from t; "
        "if f4() then null; end if; execute 'select f5()'; end"
    )
    assert found is not None
    joined = " | ".join(found)
    for name in ("f1()", "f2()", "f3()", "delete from t", "f4()", "select f5()"):
        assert name in joined


def test_dollar_quotes_inside_the_body() -> None:
    found = do_block_sql("begin perform $jitgate$x$jitgate$; end")
    assert found == ["SELECT $jitgate$x$jitgate$"]


def test_function_parameters_are_known() -> None:
    found = plpgsql_sql(
        "create function f(a int) returns int language plpgsql as "
        "$$ begin a := g(a); return a; end $$"
    )
    assert found == ["SELECT  g(a)"]  # "return a" names a variable: nothing to run


def test_code_that_does_not_compile() -> None:
    assert do_block_sql("begin garbage; end") is None
