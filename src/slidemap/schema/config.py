"""The run config's public names: the schema's models and how a config is read."""

from slidemap.schema.inputs import InputSpec
from slidemap.schema.load import (
    apply_overrides,
    json_schema,
    load_config,
    parse_config,
    parse_override,
    set_key,
    with_seed,
)
from slidemap.schema.run import (
    ColourJitter,
    CrossvalSettings,
    ModelSettings,
    PatchSource,
    PredictSettings,
    RunConfig,
    SceneSource,
    SelfTrainSettings,
    Split,
    TrainSettings,
)
from slidemap.schema.yamlfile import read_yaml

__all__ = [
    "ColourJitter", "CrossvalSettings", "InputSpec", "ModelSettings", "PatchSource",
    "PredictSettings", "RunConfig", "SceneSource", "SelfTrainSettings", "Split", "TrainSettings",
    "apply_overrides", "json_schema", "load_config", "parse_config", "parse_override",
    "read_yaml", "set_key", "with_seed",
]
