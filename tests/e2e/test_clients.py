"""Real clients (psql, asyncpg, psycopg 3, SQLAlchemy) through the real proxy."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess

import asyncpg
import psycopg
import pytest

from tests.conftest import require_binary

pytestmark = pytest.mark.e2e


def psql(gateway, sql: str, *args: str, resource: str = "demo") -> subprocess.CompletedProcess[str]:
    exe = require_binary("psql")
    env = {**os.environ, "PGSSLMODE": "disable"}
    return subprocess.run(
        [exe, gateway.dsn(resource), "-X", "-A", "-t", "-v", "VERBOSITY=verbose", *args, "-c", sql],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_psql_reads_through_the_gateway(gateway):
    out = psql(gateway, "select count(*) from customers")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "200"


def test_psql_blocked_statement_then_good_one_on_same_connection(gateway):
    exe = require_binary("psql")
    script = "select pg_read_file('/etc/passwd');\nselect 41 + 1;\n"
    out = subprocess.run(
        [exe, gateway.dsn(), "-X", "-A", "-t", "-v", "VERBOSITY=verbose"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "42501" in out.stderr
    assert "root:" not in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "42"


def test_bad_token_is_28P01(gateway):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(gateway.dsn(token="jgt_not-a-real-token"), connect_timeout=10)
    assert "28P01" in str(err.value) or "gateway token rejected" in str(err.value)


def test_unknown_database_is_refused(gateway):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(gateway.dsn().replace("/demo", "/nope"), connect_timeout=10)
    assert "not served by this gateway" in str(err.value)


def test_set_role_in_startup_options_is_refused(gateway):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(gateway.dsn(options="-c role=postgres"), connect_timeout=10)
    assert "role" in str(err.value)


@pytest.mark.parametrize("resource", ["demo", "demo_md5", "demo_trust"])
async def test_every_upstream_auth_method(gateway, resource):
    conn = await asyncpg.connect(gateway.dsn(resource))
    try:
        assert await conn.fetchval("select count(*) from orders") > 0
        # The upstream role name never reaches the client in ParameterStatus.
        assert conn.get_settings().session_authorization == "agent"
    finally:
        await conn.close()


async def test_asyncpg_binary_results_are_masked(gateway):
    conn = await asyncpg.connect(gateway.dsn())
    try:
        row = await conn.fetchrow("select email, card_number, ssn, id from customers where id = 1")
        assert row["id"] == 1
        assert "***" in row["email"] and row["email"].endswith("@" + row["email"].split("@")[1])
        assert row["card_number"].endswith("4242") and row["card_number"].startswith("*")
        assert row["ssn"] is None or "*" in row["ssn"]
        # prepared statement reuse (Bind/Execute without Describe) stays masked
        stmt = await conn.prepare("select email from customers where id = $1")
        for i in (1, 2, 3):
            assert "***" in await stmt.fetchval(i)
    finally:
        await conn.close()


async def test_blocked_statements_keep_connection_usable_asyncpg(gateway):
    conn = await asyncpg.connect(gateway.dsn())
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as err:
            await conn.execute("ALTER SYSTEM SET fsync = off")
        assert "alter" in str(err.value).lower()
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


def test_psycopg_transaction_is_aborted_after_a_block(gateway):
    with psycopg.connect(gateway.dsn()) as conn:
        with conn.transaction():
            conn.execute("select 1")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with conn.transaction():  # savepoint
                    conn.execute("drop table customers")
            # back to a usable state after the savepoint rolled back
            assert conn.execute("select count(*) from customers").fetchone()[0] == 200
        conn.execute("begin")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select pg_ls_dir('.')")
        # Postgres semantics: the transaction is aborted, as if the upstream had refused it.
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select 2").fetchone()[0] == 2


def test_psycopg_pipeline_with_blocked_statement_in_the_middle(gateway):
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.pipeline():
                c1 = conn.execute("select 1")
                conn.execute("select pg_read_file('/etc/passwd')")
                conn.execute("select 3")
        assert c1.fetchone()[0] == 1
        assert conn.execute("select 4").fetchone()[0] == 4


async def test_asyncpg_cancel_reaches_the_right_backend(gateway):
    # (psycopg's cancel() is a blocking libpq call that keeps the GIL, which would freeze
    # the in-process proxy thread; asyncpg and psql cancel the same way on the wire.)
    conn = await asyncpg.connect(gateway.dsn())
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await conn.execute("select pg_sleep(20)", timeout=0.5)
        assert await conn.fetchval("select 1") == 1
        assert asyncio.get_running_loop().time() - started < 10
    finally:
        await conn.close()


def test_psql_cancel_with_sigint(gateway):
    import signal
    import time

    exe = require_binary("psql")
    proc = subprocess.Popen(
        [exe, gateway.dsn(), "-X", "-v", "VERBOSITY=verbose", "-c", "select pg_sleep(20)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert time.monotonic() - started < 10
    assert "57014" in err  # query_canceled, from the upstream backend


def test_guessed_cancel_key_cancels_nothing(gateway):
    import socket
    import struct
    import threading

    with psycopg.connect(gateway.dsn()) as conn:
        result = {}

        def run():
            result["v"] = conn.execute("select pg_sleep(1.5), 7").fetchone()[1]

        t = threading.Thread(target=run)
        t.start()
        for pid in (conn.info.backend_pid, 1, 12345):
            with socket.create_connection(("127.0.0.1", gateway.port)) as s:
                s.sendall(struct.pack("!iiii", 16, 80877102, pid, 0))
                s.settimeout(5)
                assert s.recv(10) == b""
        t.join(10)
        assert result["v"] == 7


def test_copy_to_stdout_is_masked(gateway):
    with psycopg.connect(gateway.dsn()) as conn, conn.cursor() as cur:
        with cur.copy("copy (select id, email, notes from customers order by id limit 5) to stdout") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
    text = data.decode()
    assert text.count("\n") == 5
    assert "@example" in text and "***@" in text
    assert "4242424242424242" not in text


def test_copy_from_stdin_needs_review(gateway):
    with psycopg.connect(gateway.dsn()) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with cur.copy("copy orders (customer_id, status, amount) from stdin") as copy:
                copy.write_row((1, "x", 1))


def test_sqlalchemy_through_the_gateway(gateway):
    import sqlalchemy as sa

    engine = sa.create_engine(gateway.dsn().replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from orders where status = :s"), {"s": "paid"}).scalar() >= 0
    finally:
        engine.dispose()


async def test_hundred_concurrent_sessions(gateway):
    dsn = gateway.dsn()

    async def one(i: int) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            if i % 10 == 0:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute("select pg_read_file('/etc/passwd')")
            email = await conn.fetchval("select email from customers where id = $1", i % 200 + 1)
            assert "***" in email
            return await conn.fetchval("select $1::int", i)
        finally:
            await conn.close()

    results = await asyncio.gather(*(one(i) for i in range(100)))
    assert results == list(range(100))


def test_statements_are_recorded_with_decisions(gateway):
    token = gateway.issue(principal="agent:recorded")
    with psycopg.connect(gateway.dsn(token=token), autocommit=True) as conn:
        conn.execute("select 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET ROLE postgres")
    gateway.flush()

    async def fetch():
        sessions = await gateway.store.sessions.list_sessions()
        mine = [s for s in sessions if s.principal == "agent:recorded"]
        detail = await gateway.store.sessions.get_session(mine[0].id)
        return detail

    import time

    deadline = time.monotonic() + 10
    while True:
        detail = gateway.call(fetch())
        if detail.session.ended_at is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    decisions = [(s.sql, s.decision) for s in detail.statements]
    assert ("select 1", "allow") in decisions
    assert ("SET ROLE postgres", "block") in decisions
    assert detail.session.ended_at is not None
    assert token not in repr(detail)


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_every_protocol_mode(gateway, tmp_path, mode):
    exe = require_binary("pgbench")
    script = tmp_path / "read.sql"
    script.write_text("\\set id random(1, 200)\nSELECT email, card_number FROM customers WHERE id = :id;\n")
    token = gateway.token()
    env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "disable"}
    out = subprocess.run(
        [exe, "-h", "127.0.0.1", "-p", str(gateway.port), "-U", "agent", "-n", "-M", mode,
         "-c", "4", "-j", "2", "-t", "50", "-f", str(script), "demo"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "number of transactions actually processed: 200/200" in out.stdout
    assert "number of failed transactions: 0" in out.stdout


def test_renamed_or_wrapped_ssn_and_phone_are_still_masked(gateway, upstream):
    import re

    import psycopg

    with psycopg.connect(upstream.dsn("demo")) as admin:
        ssn, phone = admin.execute("select ssn, phone from customers where id = 1").fetchone()
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        for sql in (
            "select ssn as x, phone as y from customers where id = 1",
            "select c::text from customers c where id = 1",
            "select row_to_json(c)::text from customers c where id = 1",
            "select string_agg(ssn || ' ' || phone, ',') from customers where id = 1",
        ):
            text = " ".join(str(v) for v in conn.execute(sql).fetchone())
            assert ssn not in text and phone not in text, (sql, text)
            # By content (``***-**-****``), or whole through the column lineage (``********``).
            assert re.search(r"\*\*\*-\*\*-\*\*\*\*|\*{8}", text), (sql, text)


_RUN_ROWS_SQL = (
    "select i as id, case when i % 50 = 0 then null else 'user' || i || '@example.com' end as email,"
    " case when i in (1, 64, 65, 170) then 'key AKIAFAKEFAKEFAKEFAKE' else 'plain ' || i end as note,"
    # One column per shape the C writes itself (proxy/protocol/_rowrun.c): phone, card (no
    # Luhn check by name), an int masked by name (NULL), a secret (eight stars; '' stays '').
    " '+1 415 555 ' || lpad(i::text, 4, '0') as phone, '4242 4242 4242 ' || lpad(i::text, 4, '0') as card_number,"
    " i * 7 as ssn, case when i % 10 = 0 then '' else 'pw' || i end as password"
    " from generate_series(1, 200) as i"
)
_RUN_COLUMNS = 7


def _binary_copy_tuples(data: bytes) -> list[list[bytes | None]]:
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00")
    (ext,) = struct.unpack_from("!I", data, 15)
    pos, rows = 19 + ext, []
    while True:
        (count,) = struct.unpack_from("!h", data, pos)
        pos += 2
        if count == -1:
            assert pos == len(data)
            return rows
        row: list[bytes | None] = []
        for _ in range(count):
            (n,) = struct.unpack_from("!i", data, pos)
            pos += 4
            row.append(None if n < 0 else data[pos:pos + n])
            pos += max(n, 0)
        rows.append(row)


def _check_run_rows(rows: list[list[bytes | None]]) -> None:
    """What runs of rows (proxy.protocol.rowrun) must give: every column masked by name in
    its shape, and the scanned column masked exactly on the rows holding a key (first, 64th,
    65th of a run and beyond)."""
    assert len(rows) == 200
    for i, (ident, email, note, phone, card, ssn, password) in enumerate(rows, start=1):
        assert int.from_bytes(ident, "big") == i if len(ident) == 4 else int(ident) == i
        assert email == (None if i % 50 == 0 else b"u***@example.com")
        assert phone == b"+* *** *** " + (b"**" + f"{i:04d}".encode()[2:])
        assert card == b"**** **** **** " + f"{i:04d}".encode()
        assert ssn is None
        assert password == (b"" if i % 10 == 0 else b"********")
        if i in (1, 64, 65, 170):
            assert note is not None and b"AKIA" not in note and note.startswith(b"key ")
        else:
            assert note == f"plain {i}".encode()


@pytest.mark.parametrize("how", ["select-text", "select-binary", "copy-binary", "copy-text"])
def test_long_results_are_masked_row_by_row_as_they_stream(gateway, how):
    with psycopg.connect(gateway.dsn()) as conn:
        if how.startswith("copy"):
            fmt = "binary" if how == "copy-binary" else "text"
            with conn.cursor() as cur, cur.copy(f"copy ({_RUN_ROWS_SQL}) to stdout (format {fmt})") as copy:
                data = b"".join(bytes(chunk) for chunk in copy)
            if how == "copy-binary":
                rows = _binary_copy_tuples(data)
            else:  # no value here holds a tab, a newline or a backslash
                rows = [[None if f == b"\\N" else f for f in line.split(b"\t")] for line in data.splitlines()]
        else:
            res = conn.pgconn.exec_params(_RUN_ROWS_SQL.encode(), [], result_format=int(how == "select-binary"))
            assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.get_error_message()
            rows = [[res.get_value(r, c) for c in range(_RUN_COLUMNS)] for r in range(res.ntuples)]
    _check_run_rows(rows)
