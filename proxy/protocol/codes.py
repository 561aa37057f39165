"""Message type bytes of protocol 3.0, by name (the PostgreSQL manual, "Message Formats").

Integers, because the relay indexes ``bytes`` (``buf[pos]``) and compares the result.
Frontend and backend share some letters with different meanings ('D', 'E', 'C', 'S'), so
each direction has its own names.
"""

from __future__ import annotations

# -- frontend (client -> server) ----------------------------------------------------------
QUERY = ord("Q")
PARSE = ord("P")
BIND = ord("B")
DESCRIBE = ord("D")
EXECUTE = ord("E")
CLOSE = ord("C")
SYNC = ord("S")
FLUSH = ord("H")
FUNCTION_CALL = ord("F")
COPY_DATA = ord("d")
COPY_DONE = ord("c")
COPY_FAIL = ord("f")
TERMINATE = ord("X")

#: Every message type a client may send once the session is established.
FRONTEND = frozenset((
    QUERY, PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, FLUSH, FUNCTION_CALL,
    COPY_DATA, COPY_DONE, COPY_FAIL, TERMINATE,
))
#: What a client sends inside COPY FROM STDIN.
COPY_IN = frozenset((COPY_DATA, COPY_DONE, COPY_FAIL))

# -- backend (server -> client) -----------------------------------------------------------
PARSE_COMPLETE = ord("1")
BIND_COMPLETE = ord("2")
CLOSE_COMPLETE = ord("3")
PARAMETER_DESCRIPTION = ord("t")
ROW_DESCRIPTION = ord("T")
NO_DATA = ord("n")
DATA_ROW = ord("D")
COMMAND_COMPLETE = ord("C")
EMPTY_QUERY = ord("I")
PORTAL_SUSPENDED = ord("s")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
NOTIFICATION = ord("A")
PARAMETER_STATUS = ord("S")
READY_FOR_QUERY = ord("Z")
FUNCTION_RESULT = ord("V")
COPY_IN_RESPONSE = ord("G")
COPY_OUT_RESPONSE = ord("H")
COPY_BOTH_RESPONSE = ord("W")
BACKEND_COPY_DATA = ord("d")
BACKEND_COPY_DONE = ord("c")

#: Messages the server may send at any time, whatever it is answering.
ASYNCHRONOUS = frozenset((NOTICE_RESPONSE, NOTIFICATION, PARAMETER_STATUS))
