"""Errors of the Slack side.

    SlackError
     └── SlackDeliveryError   a Web API call failed after its bounded retries; a Celery task
                              retries later (after `retry_after` seconds when Slack said so)

Messages name the API method and Slack's error code, never a token or a request body.
"""

from __future__ import annotations


class SlackError(Exception):
    pass


class SlackDeliveryError(SlackError):
    def __init__(self, method: str, error: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"Slack {method} failed: {error}")
        self.method = method
        self.error = error
        self.retry_after = retry_after
