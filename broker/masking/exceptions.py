"""Exceptions raised by the masker.

The tree::

    JitgateError                (broker.exceptions)
    └── MaskingError            base of everything broker.masking raises on purpose
        └── MaskingRefused      a result the masker cannot mask safely: the proxy must refuse the
                                statement (or end the result) rather than forward it unmasked

An invalid `MaskingConfig` raises pydantic's ValidationError naming the field; whoever
loads the settings turns it into a ConfigError.

`str(MaskingRefused)` is one sentence that names what could not be handled; it holds no row
data, so the proxy may send it to the client as is.
"""

from __future__ import annotations

from broker.exceptions import JitgateError


class MaskingError(JitgateError):
    """Base class of the masker's errors."""


class MaskingRefused(MaskingError):
    """The masker cannot mask this result safely; fail closed."""
