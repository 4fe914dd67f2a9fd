"""`python -m train STEP …` is `meerkit train STEP …` (pretrain, finetune, evaluate); it is
also what `torchrun … -m train pretrain …` runs on every GPU."""

import sys

from meerkit.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
