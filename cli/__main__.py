"""``python -m cli``: the same as the ``autonomi-actors`` command."""

import sys

from cli.main import main

sys.exit(main())
