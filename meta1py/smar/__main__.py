"""``python -m meta1py.smar``: started by mcp only (see meta1py.worker)."""

import sys

from meta1py.smar.main import serve
from meta1py.worker import run_worker

sys.exit(run_worker("smar", serve))
