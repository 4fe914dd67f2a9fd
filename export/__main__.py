"""`python -m export STEP …` is `meerkit export STEP …` (distill, onnx, tflite, quantize,
verify)."""

import sys

from edge_runtime.contract.command_line import run_command_line, subcommand_parser
from export.cli import register

sys.exit(run_command_line(subcommand_parser("python -m", register), None, "python -m export"))
