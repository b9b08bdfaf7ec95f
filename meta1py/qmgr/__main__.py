"""``python -m meta1py.qmgr``: started by mcp only (see meta1py.worker)."""

import sys

from meta1py.qmgr.main import serve
from meta1py.worker import run_worker

sys.exit(run_worker("qmgr", serve))
