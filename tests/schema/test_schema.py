"""The typed config: overrides, the JSON Schema and the docs generated from it, the value lists,
and the cross-region runs that are now one base config plus overrides."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from slidemap import api, cli
from slidemap.errors import SlidemapError
from slidemap.models import list_models
from slidemap.schema.config import RunConfig, json_schema, load_config, parse_config
from slidemap.schema.docs import README_BEGIN, README_END, key_table
from slidemap.schema.load import apply_overrides
from slidemap.schema.values import LOSS_NAMES, MODEL_NAMES
from slidemap.train.losses import list_losses
from slidemap.train.study import load_study

ROOT = api.PACKAGE_ROOT
CROSS_REGION = ROOT / "benchmarks" / "cross_region"
RESOLVED = Path(__file__).parents[1] / "fixtures" / "cross_region_resolved.json"


def _cross_region_overrides():  # benchmarks/ is not a package: load its script by path
    spec = importlib.util.spec_from_file_location("cross_region_overrides",
                                                  CROSS_REGION / "overrides.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.overrides


def _plain(config: RunConfig) -> dict:
    return json.loads(json.dumps(config.to_dict(), default=str))


@pytest.mark.parametrize("former", sorted(json.loads(RESOLVED.read_text())))
def test_cross_region_runs_resolve_as_their_former_copied_configs(former: str,
                                                                  monkeypatch) -> None:
    """RESOLVED holds what the deleted train_<direction>[_<recipe>].yaml files resolved to."""
    monkeypatch.chdir(ROOT)
    stem = former.removesuffix(".yaml").removeprefix("train_")
    direction, recipe = stem[:9], stem[10:] or "base"
    overrides = _cross_region_overrides()(recipe, direction)
    config = load_config(CROSS_REGION / "base.yaml", overrides)
    assert _plain(config) == json.loads(RESOLVED.read_text())[former]


def test_every_cross_region_recipe_loads_both_ways(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    overrides = _cross_region_overrides()
    recipes = yaml.safe_load((CROSS_REGION / "recipes.yaml").read_text())["recipes"]
    names = set()
    for recipe in recipes:
        for direction in ("A_score_B", "B_score_A"):
            config = load_config(CROSS_REGION / "base.yaml", overrides(recipe, direction))
            assert config.train_scenes[0].image.name == f"region_{direction[0]}_image.tif"
            names.add(config.name)
    assert len(names) == 2 * len(recipes)  # every run has a name of its own


def _config(tmp_path: Path, tiny_scene: dict[str, Path]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"train": [{k: str(v) for k, v in tiny_scene.items()}]},
        "training": {"epochs": 1, "lr": 0.002, "colour_jitter": True},
    }))
    return path


def test_overrides_are_yaml_values_checked_like_the_file(tmp_path: Path,
                                                         tiny_scene: dict[str, Path]) -> None:
    path = _config(tmp_path, tiny_scene)
    config = load_config(path, ["training.lr=4e-3", "model.options.depth=2",
                                "training.random_scale=[0.5, 1.4]", "inputs.slope=true"])
    assert config.train.lr == 0.004 and config.model.options == {"depth": 2}
    assert config.train.random_scale == (0.5, 1.4) and config.inputs.channels[-1] == "slope"
    assert config.train.jitter == {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2,
                                   "invert": 0.0, "hue": 0.0, "grayscale": 0.0}
    assert load_config(path) == parse_config(yaml.safe_load(path.read_text()), path)


@pytest.mark.parametrize(("override", "message"), [
    ("training.lrr=1", r"unknown key training\.lrr: valid keys there are epochs, "),
    ("trainig.lr=1", "unknown key trainig: valid keys there are name, data"),
    ("training.lr=-1", r"training\.lr must be greater than 0, got -1"),
    ("training.lr=fast", r"training\.lr must be a valid number"),
    ("training.precision=fp16", r"training\.precision must be 'auto', 'bf16' or 'fp32'"),
    ("training.epochs=true", r"training\.epochs must be a valid integer"),
    ("training.lr", "must be key.path=value"),
    ("training.lr.x=1", r"training\.lr is not a mapping"),
    ("data.train[0].bands=[B2]", r"list items cannot be indexed; set the whole list, e\.g\. "
                                 r"--set 'data\.train=\[\.\.\.\]'"),
    ("training.lr=[1", "is not a YAML value"),
    ("model.name=unet3", r"model\.name must be 'unet'"),
    ("loss.focl=1", r"loss: unknown loss 'focl': choose from bce, "),
    ("data.train=[{image: a.tif}]", r"data\.train\[0\]\.mask is required"),
    ("init=''", "init must be a path, not empty"),
    ("data.train=[{image: 5, mask: m.tif}]", r"data\.train\[0\]\.image must be a path"),
])
def test_a_bad_override_is_one_line_naming_the_key(tmp_path: Path, tiny_scene: dict[str, Path],
                                                   override: str, message: str) -> None:
    with pytest.raises(SlidemapError, match=message) as caught:
        load_config(_config(tmp_path, tiny_scene), [override])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("override", ["training.lr", "data.train[0].mask=m.tif",
                                      "training.lr=[1"])
def test_a_set_option_of_the_wrong_form_is_a_usage_error(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli, override: str) -> None:
    """--set without =VALUE is the command line written wrong, as an unknown option is: it
    exited 1, as for a bad input file, without pointing to --help."""
    code, err = run_cli("train", _config(tmp_path, tiny_scene), "--out", tmp_path / "run",
                        "--set", override)
    assert code == 2 and err.rstrip().endswith("train --help'")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [["train"], ["crossval"], ["selftrain"],
                                     ["finetune", "slidemap-rgb-sites"]])
def test_a_key_set_twice_with_set_is_a_usage_error_naming_it(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli, command: list[str]) -> None:
    """``--set training.epochs=3 --set training.epochs=5`` trained 5 epochs without a word, where
    a config file that sets a key twice is refused."""
    code, err = run_cli(*command, _config(tmp_path, tiny_scene), "--out", tmp_path / "run",
                        "--set", "training.epochs=3", "--set", "training.epochs=5")
    assert code == 2 and "--set training.epochs is set twice (3 and 5)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_key_set_after_one_below_it_is_a_usage_error(tmp_path: Path,
                                                      tiny_scene: dict[str, Path],
                                                      run_cli) -> None:
    """``--set training.epochs=3 --set 'training={lr: 0.001}'`` dropped the epochs without a
    word: the later value replaced the mapping that held them. Set the other way round, the key
    below is put in the mapping, and both hold."""
    code, err = run_cli("train", _config(tmp_path, tiny_scene), "--out", tmp_path / "run",
                        "--set", "training.epochs=3", "--set", "training={lr: 0.001}")
    assert code == 2 and "--set training is set after training.epochs, which it replaces" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    both = apply_overrides({"training": {"epochs": 1}},
                           ["training={lr: 0.001}", "training.epochs=3"])
    assert both["training"] == {"lr": 0.001, "epochs": 3}


def test_a_study_base_key_set_twice_with_set_is_refused(tmp_path: Path,
                                                        tiny_scene: dict[str, Path]) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"base": str(_config(tmp_path, tiny_scene)),
                                     "grid": {"models": ["unet"]}}))
    with pytest.raises(SlidemapError, match=r"^--set training\.lr is set twice"):
        load_study(study, ["training.lr=1e-3", " training.lr=2e-3"])


def test_train_set_refuses_an_unknown_key_before_anything_is_written(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli) -> None:
    code, err = run_cli("train", _config(tmp_path, tiny_scene), "--out", tmp_path / "run",
                        "--set", "training.lr=1e-3", "--set", "training.epoch=2")
    assert code == 1 and "unknown key training.epoch" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_bad_model_option_fails_in_one_line_before_data_loads(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli) -> None:
    code, err = run_cli("train", _config(tmp_path, {**tiny_scene, "image": tmp_path / "no.tif"}),
                        "--out", tmp_path / "run", "--set", "model.options.depht=2")
    assert code == 1 and "does not take options {'depht': 2}" in err and "Traceback" not in err



@pytest.mark.parametrize("override", ["model.options={depth: 99}", "model.options={depth: 12}",
                                      "model.width=257"])
def test_a_network_too_large_fails_in_one_line_before_memory_is_taken(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli, override: str) -> None:
    code, err = run_cli("train", _config(tmp_path, tiny_scene), "--out", tmp_path / "run",
                        "--set", override)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "model.width" in err or "parameters" in err or "does not build" in err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()

def test_study_runs_as_a_base_file_and_override_lists(tmp_path: Path,
                                                      tiny_scene: dict[str, Path]) -> None:
    base = _config(tmp_path, tiny_scene)
    raw = yaml.safe_load(base.read_text())
    raw["data"]["val"] = raw["data"]["train"]
    base.write_text(yaml.safe_dump(raw))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"base": str(base), "grid": {
        "variants": {"fast": ["training.lr=4e-3", "training.colour_jitter=false"]}}}))
    runs = {run.variant: run.raw for run in load_study(study, ["training.epochs=2"]).runs}
    fast, plain = parse_config(runs["fast"]), parse_config(runs["base"])
    assert fast.train.lr == 4e-3 and plain.train.lr == 2e-3
    assert runs["fast"]["training"]["colour_jitter"] is False
    assert runs["fast"]["training"]["epochs"] == runs["base"]["training"]["epochs"] == 2
    study.write_text(yaml.safe_dump({"base": str(base), "grid": {
        "variants": {"typo": ["training.lrr=4e-3"]}}}))
    with pytest.raises(SlidemapError, match=r"run unet-bce\+dice-typo-s0.*training\.lrr"):
        load_study(study)


def test_the_committed_json_schema_is_the_export(monkeypatch, capsys) -> None:
    committed = (ROOT / "configs" / "slidemap.schema.json").read_text()
    assert committed == json_schema(), "run: slidemap config-schema > configs/slidemap.schema.json"
    monkeypatch.setattr(sys, "argv", ["slidemap", "config-schema"])
    cli.main()
    assert capsys.readouterr().out == committed


def test_every_shipped_config_is_valid_against_the_json_schema() -> None:
    """What an editor checks is what slidemap accepts: the JSON Schema is not looser or
    stricter than the loader on the configs we ship."""
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(json_schema()))
    for path in [*(ROOT / "configs").glob("*.yaml"), CROSS_REGION / "base.yaml"]:
        assert not list(validator.iter_errors(yaml.safe_load(path.read_text()))), path
    assert list(validator.iter_errors({"data": {"train": [{"image": "a"}]}, "x": 1}))


def test_the_readme_key_table_is_generated_from_the_schema() -> None:
    text = (ROOT / "configs" / "README.md").read_text()
    table = text.split(README_BEGIN)[1].split(README_END)[0]
    assert table.strip() == key_table().strip(), "regenerate: python -m slidemap.schema.docs"


def test_value_lists_are_the_registries() -> None:
    assert sorted(MODEL_NAMES) == list_models()
    assert sorted(LOSS_NAMES) == list_losses()


def test_the_schema_package_imports_only_the_errors_of_slidemap() -> None:
    package = Path(__file__).parents[2] / "src" / "slidemap" / "schema"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith("slidemap") or name == "slidemap.errors" \
                    or name.startswith("slidemap.schema"), f"{path.name} imports {name}"


def test_the_key_table_says_a_data_scene_needs_its_mask_as_the_loader_does() -> None:
    """The table once gave `data.*[].mask` the default null of a selftrain target's scene."""
    row = next(line for line in key_table().splitlines()
               if line.startswith("| `data.*[].mask` |"))
    assert row.split(" | ")[1] == "required"
    with pytest.raises(SlidemapError, match=r"data.train\[0\].mask is required"):
        parse_config({"data": {"train": [{"image": "a.tif"}]}})
    config = parse_config({"data": {"train": [{"image": "a.tif", "mask": "m.tif"}]},
                           "selftrain": {"target": [{"image": "b.tif"}]}})
    assert config.selftrain is not None and config.selftrain.target[0].mask is None
