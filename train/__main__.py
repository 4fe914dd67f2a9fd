"""`python -m train STEP …` is `meerkit train STEP …` (pretrain, finetune, evaluate, probe);
it is also what `torchrun … -m train pretrain …` runs on every GPU."""

import sys

from edge_runtime.contract.command_line import run_command_line, subcommand_parser
from train.cli import register

sys.exit(run_command_line(subcommand_parser("python -m", register), None, "python -m train"))
