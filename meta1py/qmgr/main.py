"""qmgr's entry point for the worker skeleton (``python -m meta1py.qmgr``)."""

from meta1py.qmgr.service import serve

__all__ = ["serve"]
