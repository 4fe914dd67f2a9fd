"""`python -m train …` is `meerkit …` (synth, data, train commands)."""

import sys

from train.umbrella import main

sys.exit(main())
