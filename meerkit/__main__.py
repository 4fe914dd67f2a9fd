"""`python -m meerkit …` is `meerkit …`."""

import sys

from meerkit.cli import main

sys.exit(main())
