"""Score model files on a run config's data.val as finetune.json does (patches on their own grid).

Usage: python benchmarks/nepal/score_val.py CONFIG.yaml MODEL [MODEL ...]
"""

import argparse
import json

from slidemap.io.modelfile import load_model
from slidemap.schema.config import load_config
from slidemap.train.finetune import FIGURES, score_on_val

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("config", help="a run config (YAML)")
parser.add_argument("models", nargs="+", help="model files (.safetensors)")
args = parser.parse_args()
config = load_config(args.config)
for path in args.models:
    metrics = score_on_val(load_model(path), config)
    print(json.dumps({"model": path, **{k: metrics[k] for k in FIGURES}}))
