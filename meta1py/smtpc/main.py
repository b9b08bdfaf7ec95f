"""smtpc's entry point for the worker skeleton (``python -m meta1py.smtpc``)."""

from meta1py.smtpc.serve import serve

__all__ = ["serve"]
