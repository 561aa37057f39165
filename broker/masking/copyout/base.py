"""What every COPY TO STDOUT plan offers the proxy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.masking.rows import RowPlan


class CopyPlan(ABC):
    """Masks the CopyData payloads of one COPY TO STDOUT, in the order the server sent them.

    Stateful (the binary header, the csv/text header line): one plan per COPY. PostgreSQL
    sends one CopyData per row (the binary header rides with the first row, the trailer on
    its own); a payload holding several whole rows is handled too, but a row split across
    payloads raises MaskingRefused, as does anything that does not parse.
    """

    #: The NULL string of a text COPY whose lines `run_plan` applies to; None: binary tuples.
    text_null: bytes | None = None

    @property
    def run_plan(self) -> RowPlan | None:
        """The row plan a run of CopyData messages (each one binary tuple, or one text line:
        `text_null`) can be masked with at once (proxy.protocol.rowrun), in the plan's
        current state; None: one by one."""
        return None

    @abstractmethod
    def mask_copy_data(self, data: bytes) -> tuple[bytes, int]:
        """(payload to send, number of values masked); `data` itself when nothing changed."""
