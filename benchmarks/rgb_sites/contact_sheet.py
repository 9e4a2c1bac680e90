"""Contact sheets of what the RGB networks see: per site, rows of image | mask | each model's
probability (threshold-free, 0 black to 1 white), for the first patches of the site (Jinsha: a
512 px crop of region A at 1 m). A diagnosis aid, not a figure of merit.

Usage (repository root):
  .venv/bin/python benchmarks/rgb_sites/contact_sheet.py OUT_DIR SITE MODEL_DIR [MODEL_DIR ...]
MODEL_DIR holds SITE/model.safetensors (e.g. runs/rgb-loso): the LOSO model that never saw SITE.
"""

import argparse
from pathlib import Path

import numpy as np
from make_configs import SITES
from PIL import Image

from slidemap.data.channels import InputSpec
from slidemap.data.dataset import SceneArrays, load_scene_arrays
from slidemap.data.sources import PatchArrays, load_patch_arrays
from slidemap.infer.ensemble import Predictor
from slidemap.infer.patches import native_prob
from slidemap.infer.predict import PredictOptions
from slidemap.io.modelfile import load_model
from slidemap.schema.config import PatchSource

ROWS = 4
SIDE = 160
CROP = (slice(200, 712), slice(300, 812))  # Jinsha region A at 1 m: a slope with landslides


def site_arrays(site: str, spec: InputSpec) -> list[SceneArrays]:
    """The first ROWS patches of a site (Jinsha: one crop of region A) read with ``spec``."""
    source = SITES[site][0][0]
    if "patches" in source:
        return load_patch_arrays(PatchSource("patches", Path(source["patches"])), spec)[:ROWS]
    scene = load_scene_arrays(Path(source["image"]), Path(source["mask"]), None, spec)
    return [SceneArrays(scene.name, scene.x[:, CROP[0], CROP[1]], scene.target[CROP])]


def tile(array: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) values in [0, 255] as a SIDE × SIDE RGB tile."""
    image = Image.fromarray(np.nan_to_num(array).clip(0, 255).astype(np.uint8))
    return np.asarray(image.convert("RGB").resize((SIDE, SIDE)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where sheet-SITE.png is written")
    parser.add_argument("site", choices=list(SITES))
    parser.add_argument("model_dirs", nargs="+", help="folders holding SITE/model.safetensors")
    args = parser.parse_args()
    out, site, model_dirs = args.out, args.site, args.model_dirs
    raw = InputSpec(scale=0.5, resolution_m=1.0)
    shown = site_arrays(site, raw)
    probs = []
    for model_dir in model_dirs:
        bundle = load_model(Path(model_dir) / site / "model.safetensors")
        predictor = Predictor([bundle], precision="fp32")
        options = PredictOptions(tile=512, overlap=64)
        probs.append([native_prob(predictor, a, options)[0]
                      for a in site_arrays(site, bundle.inputs)])
    rows = []
    for i, arrays in enumerate(shown):
        labels = arrays.labels if isinstance(arrays, PatchArrays) else arrays.target
        mask = np.where(labels == 1, 255, np.where(labels == 255, 96, 0))
        rows.append(np.concatenate([tile(np.moveaxis(arrays.x[:3], 0, -1)), tile(mask)]
                                   + [tile(p[i] * 255) for p in probs], axis=1))
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out / f"sheet-{site}.png")


if __name__ == "__main__":
    main()
