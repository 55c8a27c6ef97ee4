"""``python -m prefloop.cli ...`` is ``prefloop ...``."""

import sys

from prefloop.cli.main import main

sys.exit(main())
