#!/usr/bin/env python
"""Run a saved jointtrain model on an input file: ``jointtrain predict`` as a script.

python scripts/predict.py runs/vision_digits scene.png --out pred.json   # also writes pred_scene.png
"""

from __future__ import annotations

import sys

from core.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
