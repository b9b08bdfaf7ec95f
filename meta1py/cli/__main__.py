"""``python -m meta1py.cli``: the ``meta1`` command."""

import sys

from meta1py.cli import main

sys.exit(main())
