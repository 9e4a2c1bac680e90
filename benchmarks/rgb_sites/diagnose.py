"""What the RGB networks see per site: patch sizes, mask values, landslide fraction before and
after halving (as training reads patches at scale 0.5), landslide parts and their sizes, RGB
means, and the mean input under the first recipe's pooled normalisation (its shipped sidecar).

Usage (repository root): .venv/bin/python benchmarks/rgb_sites/diagnose.py
"""

import argparse
import glob
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from scipy import ndimage

from slidemap.data.scaling import promote
from slidemap.io.modelfile import load_model

DATA = "../shared/data"
FIRST = Path(__file__).parents[2] / "models" / "slidemap-rgb-sites.safetensors"


def main() -> None:
    # No arguments, but --help prints usage and a stray argument is refused.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    bundle = load_model(FIRST)
    mean, std = np.asarray(bundle.mean), np.asarray(bundle.std)
    print(f"pooled normalisation (first recipe's shipped model): mean {mean.round(1)} "
          f"std {std.round(1)}")
    for site in ["nepal", "bijie", "sichuan"]:
        images = sorted(glob.glob(f"{DATA}/{site}/images/*"))
        masks = sorted(glob.glob(f"{DATA}/{site}/masks/*"))
        sizes, values, modes = set(), set(), set()
        before, after, parts, largest, rgb, lost = [], [], [], [], [], 0
        for image_path, mask_path in zip(images, masks, strict=True):
            image, mask_file = Image.open(image_path), Image.open(mask_path)
            sizes.add(image.size)
            modes.add((image.mode, mask_file.mode))
            raw = np.asarray(mask_file)
            values |= set(np.unique(raw).tolist())
            mask = (raw > 0).astype(np.uint8)
            labelled, n = ndimage.label(mask)
            areas = np.bincount(labelled.ravel())[1:]
            parts += list(areas)
            largest.append(areas.max())
            lost += sum(promote((labelled == k).astype(np.uint8), 0.5, "mask").sum() == 0
                        for k in range(1, n + 1))
            before.append(mask.mean())
            after.append(promote(mask, 0.5, "mask").mean())
            rgb.append(np.asarray(image.convert("RGB"), np.float32).reshape(-1, 3).mean(0))
        print(f"{site}: {len(images)} patches, sizes {sorted(sizes)[0]}..{sorted(sizes)[-1]}, "
              f"modes {modes}, mask values {sorted(values)}")
        print(f"  landslide fraction {np.mean(before):.4f} (per patch {np.min(before):.4f}-"
              f"{np.max(before):.4f}) -> {np.mean(after):.4f} at half size; {len(parts)} parts, "
              f"median {np.median(parts):.0f} px, {lost} vanish at half size; largest part "
              f"per patch: median {np.median(largest):.0f} px")
        rgb_mean = np.mean(rgb, 0)
        print(f"  RGB mean {rgb_mean.round(1)}, "
              f"pooled-normalised {((rgb_mean - mean) / std).round(2)}")
    for region in "AB":
        with rasterio.open(f"{DATA}/jinsha/region_{region}_image.tif") as src:
            image = src.read(out_shape=(3, src.height // 4, src.width // 4)).astype(np.float32)
        with rasterio.open(f"{DATA}/jinsha/region_{region}_mask.tif") as src:
            mask = src.read(1)
        pixels = image[:, image.sum(0) > 0].T
        labelled, n = ndimage.label(mask == 1)
        parts = np.bincount(labelled.ravel())[1:]
        rgb_mean = pixels.mean(0)
        print(f"jinsha {region}: landslide fraction {(mask == 1).sum() / (mask != 255).sum():.4f}"
              f", {n} parts, median {np.median(parts):.0f} px at 0.5 m; RGB mean "
              f"{rgb_mean.round(1)}, pooled-normalised {((rgb_mean - mean) / std).round(2)}")


if __name__ == "__main__":
    main()
