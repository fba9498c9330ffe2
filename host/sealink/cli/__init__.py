"""`sealink`: the gateway's command line."""

from sealink.cli.main import main

__all__ = ["main"]
