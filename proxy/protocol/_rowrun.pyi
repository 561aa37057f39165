# The C extension built from _rowrun.c; proxy/protocol/rowrun.py documents it.
from collections.abc import Callable

def join_scanned(
    buf: bytes | bytearray, start: int, stop: int, scanned: bytes, max_length: int, max_rows: int, kind: int, /
) -> tuple[bytes, int, int]: ...
def mask_run(
    buf: bytes | bytearray,
    start: int,
    stop: int,
    rewrite: bytes,
    fns: tuple[Callable[[bytes], bytes | None] | None, ...],
    max_length: int,
    max_rows: int,
    kind: int,
    /,
) -> tuple[bytes, int, int, int]: ...
def join_text(
    buf: bytes | bytearray, start: int, stop: int, null: bytes, scanned: bytes, max_length: int, max_rows: int, /
) -> tuple[bytes, int, int]: ...
def mask_text_run(
    buf: bytes | bytearray,
    start: int,
    stop: int,
    null: bytes,
    rewrite: bytes,
    fns: tuple[Callable[[bytes], bytes | None] | None, ...],
    max_length: int,
    max_rows: int,
    /,
) -> tuple[bytes, int, int, int]: ...
def mask_whole(value: bytes | bytearray, code: int, /) -> bytes | None: ...
