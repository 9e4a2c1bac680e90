"""The benchmark configs: every one still loads as its command reads it, and names only data
that exists; the seed systems' protocol configs (benchmarks/protocol/) are each the U-Net terrain
recipe with only the model changed, so its comparison with that recipe is paired on everything
else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from factories import SHARED_DATA

from slidemap import api
from slidemap.schema.config import load_config, parse_config
from slidemap.train.study import load_study

BENCHMARKS = api.PACKAGE_ROOT / "benchmarks"
PROTOCOL = BENCHMARKS / "protocol"
# Recipe fragments that make_configs.py (rgb_sites) and overrides.py (cross_region: test_schema)
# turn into run configs; every other YAML file is a run config or a study.
FRAGMENTS = {BENCHMARKS / "cross_region" / "recipes.yaml",
             *(p for p in (BENCHMARKS / "rgb_sites").glob("*.yaml")
               if not p.name.startswith(("loso-", "all-sites")))}
CONFIGS = sorted({*BENCHMARKS.rglob("*.yaml"), *BENCHMARKS.rglob("*.yaml.in")} - FRAGMENTS)
SEED_SYSTEMS = {"fusion": "fusion", "da_unet": "da_unet",
                "unetpp_attention": "unetpp_spatial_contextual", "segformer": "segformer"}


def _raw(name: str) -> dict:
    return yaml.safe_load((PROTOCOL / f"{name}.yaml").read_text())


@pytest.mark.parametrize("system", sorted(SEED_SYSTEMS))
def test_a_seed_system_config_changes_only_the_model(system, monkeypatch) -> None:
    candidate, baseline = _raw(f"{system}_terrain"), _raw("unet_terrain")
    assert candidate.pop("model")["name"] == SEED_SYSTEMS[system]
    assert candidate.pop("name") != baseline.pop("name")
    baseline.pop("model")
    assert candidate == baseline
    monkeypatch.chdir(api.PACKAGE_ROOT)  # data paths are relative to the repository root
    config = load_config(PROTOCOL / f"{system}_terrain.yaml")
    assert "dem" not in config.inputs.channels
    if system == "fusion":  # the terrain stream reads every channel after the RGB bands
        terrain = len(config.inputs.channels) - len(config.inputs.image_bands)
        assert config.model.options == {"elevation_channels": terrain}


def test_the_seed_system_script_runs_every_system_against_the_terrain_unet() -> None:
    script = (PROTOCOL / "run_seed_systems.sh").read_text()
    assert "--baseline benchmarks/protocol/unet_terrain.yaml" in script
    readme = (PROTOCOL / "README.md").read_text()
    assert f"run_seed_systems.sh {' '.join(SEED_SYSTEMS)}" in readme


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(BENCHMARKS)) for p in CONFIGS])
def test_every_benchmark_config_loads_and_names_data_that_exists(path: Path, monkeypatch) -> None:
    monkeypatch.chdir(api.PACKAGE_ROOT)  # data paths are relative to the repository root
    text = path.read_text()
    if path.suffix == ".in":  # run.sh fills in the arm and seed
        text = text.replace("ARM", "suggested_k2_s0").replace("SEED", "0")
    raw = yaml.safe_load(text)
    if "grid" in raw:
        load_study(path)
    else:
        parse_config(raw, path)
    if SHARED_DATA.is_dir():
        for name in re.findall(r"\.\./shared/data/[^\s,}\]]+", text):
            assert Path(name).exists(), f"{path} names {name}"
