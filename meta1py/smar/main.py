"""smar's entry point for the worker skeleton (``python -m meta1py.smar``)."""

from meta1py.smar.serve import serve

__all__ = ["serve"]
