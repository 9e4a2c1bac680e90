"""An untrained model file with the inputs of ``configs/jinsha-unet-terrain.yaml``, for timing.

A trained U-Net on RGB + relief (8, 32, 128 m), slope, curvature and roughness now ships as the
default (``models/slidemap-jinsha-unet-terrain``). This untrained one (seeded random weights, the
config's architecture, inputs and prediction defaults; normalisation of the Jinsha scenes'
order of magnitude) is what the throughput section of ``benchmarks/scale.md`` timed before it
shipped, and is kept to reproduce those figures (speed and memory do not depend on the weights)::

    .venv/bin/python benchmarks/terrain_model.py /tmp/bench/unet-terrain
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mosaic.py --size 6325 --configs bf16 \\
        --model /tmp/bench/unet-terrain.safetensors --out /tmp/bench
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from slidemap.data.channels import InputSpec
from slidemap.io.modelfile import ModelBundle, PredictDefaults, save_model
from slidemap.models import build_model

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "jinsha-unet-terrain.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="model file path without suffix")
    args = parser.parse_args()
    config = yaml.safe_load(CONFIG.read_text())
    spec = InputSpec.from_dict(config["inputs"])
    channels = len(spec.channels)
    torch.manual_seed(0)
    predict = config["predict"]
    bundle = ModelBundle(
        model=build_model(config["model"]["name"], channels, width=config["model"]["width"]),
        architecture=config["model"]["name"], width=config["model"]["width"], options={},
        inputs=spec, mean=[130.0] * 3 + [0.0] * (channels - 3),
        std=[40.0] * 3 + [10.0] * (channels - 3),
        predict=PredictDefaults(tile=predict["tile"], overlap=predict["overlap"],
                                scales=tuple(predict["scales"])))
    print(save_model(bundle, args.out))


if __name__ == "__main__":
    main()
