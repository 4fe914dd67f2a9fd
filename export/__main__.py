"""`python -m export STEP …` is `meerkit export STEP …` (distill, onnx, tflite, quantize,
verify)."""

import sys

from meerkit.cli import main

sys.exit(main(["export", *sys.argv[1:]]))
