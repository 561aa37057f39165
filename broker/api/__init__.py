"""The broker's HTTP API: `create_app(settings, store)`."""

from broker.api.app import create_app

__all__ = ["create_app"]
