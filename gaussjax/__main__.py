"""``python -m gaussjax``: the ``gaussjax`` command."""

import sys

from gaussjax._cli import main

sys.exit(main())
