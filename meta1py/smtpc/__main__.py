"""``python -m meta1py.smtpc``: started by mcp only (see meta1py.worker)."""

import sys

from meta1py.smtpc.main import prepare, serve
from meta1py.worker import run_worker

sys.exit(run_worker("smtpc", serve, prepare))
