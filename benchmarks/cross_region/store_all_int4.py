"""A model stored with every convolution kernel in 4 bits, for the cross-region check of why
``weights_dtype: int4`` keeps the smaller kernels at 8 bits (benchmarks/experiments.md,
*int4 weights*).

    .venv/bin/python benchmarks/cross_region/store_all_int4.py MODEL.safetensors OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slidemap import api
from slidemap.io import modelfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    modelfile.INT4_MIN_WEIGHTS = 0  # every kernel, however small
    api.store_weights(args.model, args.out, "int4")


if __name__ == "__main__":
    main()
