"""What every COPY TO STDOUT plan offers the proxy."""

from __future__ import annotations

from abc import ABC, abstractmethod


class CopyPlan(ABC):
    """Masks the CopyData payloads of one COPY TO STDOUT, in the order the server sent them.

    Stateful (the binary header, the csv/text header line): one plan per COPY. PostgreSQL
    sends one CopyData per row (the binary header rides with the first row, the trailer on
    its own); a payload holding several whole rows is handled too, but a row split across
    payloads raises MaskingRefused, as does anything that does not parse.
    """

    @abstractmethod
    def mask_copy_data(self, data: bytes) -> tuple[bytes, int]:
        """(payload to send, number of values masked); `data` itself when nothing changed."""
