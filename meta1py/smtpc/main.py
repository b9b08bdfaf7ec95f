"""smtpc's entry point for the worker skeleton (``python -m meta1py.smtpc``)."""

from meta1py.smtpc.serve import prepare, serve

__all__ = ["prepare", "serve"]
