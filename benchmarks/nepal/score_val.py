"""Score model files on a run config's data.val as finetune.json does (patches on their own grid).

Usage: python benchmarks/nepal/score_val.py CONFIG.yaml MODEL [MODEL ...]
"""

import json
import sys

from slidemap.io.modelfile import load_model
from slidemap.schema.config import load_config
from slidemap.train.finetune import FIGURES, score_on_val

config = load_config(sys.argv[1])
for path in sys.argv[2:]:
    metrics = score_on_val(load_model(path), config)
    print(json.dumps({"model": path, **{k: metrics[k] for k in FIGURES}}))
