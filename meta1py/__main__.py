"""``python -m meta1py`` is the ``meta1`` command."""

import sys

from meta1py.cli import main

sys.exit(main())
