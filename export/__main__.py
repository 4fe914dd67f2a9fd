"""`python -m export STEP …` is `meerkit export STEP …` (distill, onnx, tflite, quantize,
verify)."""

import sys

from train.umbrella import main

sys.exit(main(["export", *sys.argv[1:]]))
