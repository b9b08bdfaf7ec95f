"""``python -m meta1py.smtps``: started by mcp only (see meta1py.worker)."""

import sys

from meta1py.smtps.main import prepare, serve
from meta1py.worker import run_worker

sys.exit(run_worker("smtps", serve, prepare))
