"""smtps's entry point for the worker skeleton (``python -m meta1py.smtps``)."""

from meta1py.smtps.service import serve

__all__ = ["serve"]
