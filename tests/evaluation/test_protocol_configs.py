"""The seed systems' protocol configs (benchmarks/protocol/): each is the U-Net terrain recipe
with only the model changed, so its comparison with that recipe is paired on everything else."""

from __future__ import annotations

import pytest
import yaml

from slidemap import api
from slidemap.schema.config import load_config

PROTOCOL = api.PACKAGE_ROOT / "benchmarks" / "protocol"
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
