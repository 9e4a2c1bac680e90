"""Write the leave-one-site-out configs (loso-SITE.yaml) and the shipped RGB model's config
(configs/rgb-sites-unet.yaml) from base.yaml: the same recipe, only the training sites differ.

Sites are weighted alike: each is listed so many times that every site brings about the same
number of labelled pixels at the working scale (random windows are drawn in proportion to
labelled pixels): at half size Sichuan's 36 tiles hold ~9.4 M, Nepal's and Bijie's ~2.4 M each,
Jinsha's two scenes ~1.5 M together.

Usage (repository root): .venv/bin/python benchmarks/rgb_sites/make_configs.py [RECIPE]
RECIPE (default base) names RECIPE.yaml; a recipe other than base writes loso-RECIPE-SITE.yaml,
and every recipe but the shipped one (SHIPPED) all-sites-RECIPE.yaml here; the shipped recipe's
all-sites config is configs/rgb-sites-unet.yaml. So every pre-registered recipe stays
reproducible.
"""

import argparse
from pathlib import Path

import yaml

HERE = Path(__file__).parent
# The recipe of the shipped model: the ninth comparison adopted it (README.md). base.yaml stays
# the first recipe, the baseline of every earlier comparison, so their commands still rerun them.
SHIPPED = "domain_batches"
DATA = "../shared/data"
SITES = {  # site: (sources, times listed)
    "nepal": ([{"patches": f"{DATA}/nepal"}], 4),
    "bijie": ([{"patches": f"{DATA}/bijie"}], 4),
    "sichuan": ([{"patches": f"{DATA}/sichuan"}], 1),
    "jinsha": ([{"image": f"{DATA}/jinsha/region_{r}_image.tif",
                 "mask": f"{DATA}/jinsha/region_{r}_mask.tif"} for r in "AB"], 6),
}


def sources(sites: list[str]) -> list[dict]:
    return [dict(item) for site in sites for _ in range(SITES[site][1])
            for item in SITES[site][0]]


def config(name: str, sites: list[str], header: str, weights: str = "float32",
           recipe: str = "base") -> str:
    base = yaml.safe_load((HERE / f"{recipe}.yaml").read_text())
    base["training"]["weights_dtype"] = weights  # storage only: training is the same
    body = {"name": name, "data": {"train": sources(sites)}, **base}
    return header + yaml.safe_dump(body, sort_keys=False, width=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default="base", help="names RECIPE.yaml here")
    recipe = parser.parse_args().recipe
    tag = "" if recipe == "base" else f"-{recipe}"
    note = (f"# Written by benchmarks/rgb_sites/make_configs.py from {recipe}.yaml: "
            "edit those.\n")
    for held in SITES:
        rest = [s for s in SITES if s != held]
        text = config(f"rgb-loso{tag}-{held}", rest,
                      f"# Leave-one-site-out: trained on {', '.join(rest)}; {held} held out.\n"
                      + note, recipe=recipe)
        (HERE / f"loso{tag}-{held}.yaml").write_text(text)
    what = ("The shipped RGB-only model (models/slidemap-rgb-sites.*)" if recipe == SHIPPED
            else f"The {recipe} recipe on all four sites (not shipped)")
    shipped = config("slidemap-rgb-sites" if recipe == SHIPPED else f"rgb-sites{tag}",
                     list(SITES), f"# {what}: all four RGB sites.\n" + note, weights="int4",
                     recipe=recipe)
    # Only the shipped recipe's all-sites config is a run config of configs/.
    target = HERE.parents[1] / "configs" / "rgb-sites-unet.yaml" if recipe == SHIPPED \
        else HERE / f"all-sites{tag}.yaml"
    target.write_text(shipped)


if __name__ == "__main__":
    main()
