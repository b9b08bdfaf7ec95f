"""smtps's entry point for the worker skeleton (``python -m meta1py.smtps``)."""

from meta1py.smtps.service import prepare, serve

__all__ = ["prepare", "serve"]
