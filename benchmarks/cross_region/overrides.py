"""The --set arguments of one cross-region run: ``overrides.py RECIPE DIRECTION`` prints them one
per line (for ``mapfile`` in run.sh); :func:`overrides` gives them to Python (the tests)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

HERE = Path(__file__).parent
BASE = HERE / "base.yaml"
RECIPES = HERE / "recipes.yaml"


def overrides(recipe: str, direction: str) -> list[str]:
    """``key.path=value`` overrides of base.yaml for ``recipe`` trained in ``direction``
    (``A_score_B`` or ``B_score_A``)."""
    spec = yaml.safe_load(RECIPES.read_text())
    train, score = direction[0], direction[-1]
    entry = spec["recipes"][recipe]
    name = entry["name"].format(train=train, score=score)
    return [*spec["directions"][direction], f"name={name}", *entry["set"]]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a recipe of recipes.yaml")
    parser.add_argument("direction", help="A_score_B or B_score_A")
    args = parser.parse_args()
    for item in overrides(args.recipe, args.direction):
        print(f"--set\n{item}")
