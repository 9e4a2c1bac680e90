"""Command-line conventions: fast start-up, choices in the help, exit codes, one-line messages
through logging (--quiet, --verbose) that print paths literally, JSON on stdout only when asked."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import warnings
from io import StringIO
from pathlib import Path

import pytest
import typer
from factories import patch_folder
from rich.console import Console

from slidemap import __version__, cli
from slidemap.errors import SlidemapWarning
from slidemap.infer.budget import DEFAULT_MEMORY_MB

HEAVY = ("torch", "rasterio", "numpy", "scipy", "matplotlib", "onnxruntime", "dask", "h5py",
         "shapely", "pyogrio", "slidemap.api")
COMMANDS = sorted(c.name or c.callback.__name__ for c in cli.app.registered_commands
                  if c.callback is not None)

IMPORTS_OF_HELP = """
import json, sys
import slidemap.cli
loaded = {"import": [m for m in HEAVY if m in sys.modules]}
for args in [["--help"], ["--version"], *([c, "--help"] for c in COMMANDS)]:
    sys.argv = ["slidemap", *args]
    try:
        slidemap.cli.main()
    except SystemExit:
        pass
    loaded[" ".join(args)] = [m for m in HEAVY if m in sys.modules]
print(json.dumps(loaded), file=sys.stderr)
"""


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        *args: object) -> tuple[int, str, str]:
    """``slidemap ARGS`` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["slidemap", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "200")
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_start_up_imports_no_heavy_module() -> None:
    """``import slidemap.cli``, ``--help`` of every command and ``--version`` load neither torch
    nor rasterio nor the api: that is what keeps ``slidemap --help`` under a second."""
    code = f"HEAVY = {HEAVY!r}\nCOMMANDS = {COMMANDS!r}\n{IMPORTS_OF_HELP}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False, env={"COLUMNS": "200", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stderr.splitlines()[-1])
    assert len(loaded) == len(COMMANDS) + 3
    assert all(modules == [] for modules in loaded.values()), loaded


def test_version_and_short_help(capsys, monkeypatch) -> None:
    assert run(capsys, monkeypatch, "--version") == (0, f"slidemap {__version__}\n", "")
    for args in ([], ["predict"]):
        code, short, _ = run(capsys, monkeypatch, *args, "-h")
        assert code == 0 and "Usage: " in short and "[OPTIONS]" in short
        assert run(capsys, monkeypatch, *args, "--help")[1] == short


def test_help_shows_choices_not_types(capsys, monkeypatch) -> None:
    for command in COMMANDS:
        code, shown, _ = run(capsys, monkeypatch, command, "--help")
        assert code == 0 and "list[" not in shown, (command, shown)
    shown = run(capsys, monkeypatch, "predict", "--help")[1]
    for choices in ("<auto|bf16|fp32>", "<torch|onnx>", "<model|scene>", "<gpkg|geojson>"):
        assert choices in shown
    assert "<float32|float16|int8|int4>" in run(capsys, monkeypatch, "export", "--help")[1]


def test_evaluate_help_names_the_threshold_a_prediction_raster_is_scored_at(capsys,
                                                                          monkeypatch) -> None:
    """A --prediction raster has no model: it is scored at the threshold its tags record, else
    0.5, and the help said only "the model's"."""
    shown = " ".join(run(capsys, monkeypatch, "evaluate", "--help")[1].replace("│", " ").split())
    assert "the threshold its provenance tags record, else 0.5" in shown


def test_predict_help_gives_the_memory_budget_it_uses(capsys, monkeypatch) -> None:
    """--memory-mb's help said "default: the README's", sending the user to another page for
    a number the help can give."""
    shown = " ".join(run(capsys, monkeypatch, "predict", "--help")[1].replace("│", " ").split())
    assert f"(default: {DEFAULT_MEMORY_MB}; the model and runtime come on top)" in shown


@pytest.mark.parametrize(("args", "code", "named"), [
    (["predict", "x.tif", "--out", "o", "--precision", "fp64"], 2, "'fp64' is not one of"),
    (["predict", "x.tif", "--out", "o", "--format", "shp"], 2, "'shp' is not one of"),
    (["predict", "x.tif", "--out", "o", "--precison", "fp32"], 2, "--precison"),
    (["predict", "x.tif", "--out", "o", "--scales", "1,x"], 2, "--scales '1,x'"),
    (["predict", "x.tif", "--out", "o", "--scales", "nan"], 2, "got nan"),
    (["predict", "x.tif", "--out", "o", "--min-area", "-5"], 2, "--min-area -5.0 is not a size"),
    (["predict", "x.tif", "--out", "o", "--workers", "2", "--dask", "tcp://h:8786"], 2,
     "give one of them"),
    (["predict", "x.tif", "--out", "o", "--simplify", "nan"], 2, "--simplify nan is not a size"),
    (["-q", "-v", "models"], 2, "--verbose and --quiet"),
    (["evaluate", "truth.tif"], 2, "--prediction RASTER or --image"),
    (["train", "run.yaml", "--out", "o", "--resume", "--overwrite"], 2, "pass one of them"),
    (["finetune", "m.safetensors", "run.yaml", "--out", "o", "--resume", "--overwrite"], 2,
     "pass one of them"),
    (["predict", "x.tif", "--out", "o"], 1, "x.tif does not exist"),
    (["evaluate", "t.tif", "--prediction", "p.tif"], 1, "prediction p.tif does not exist"),
    (["report", "."], 1, "has no history.csv"),
])
def test_usage_errors_exit_2_and_runtime_errors_exit_1(capsys, monkeypatch, tmp_path, args,
                                                       code, named) -> None:
    monkeypatch.chdir(tmp_path)
    got, out, err = run(capsys, monkeypatch, *args)
    assert (got, out) == (code, "")
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    assert err.rstrip().endswith("--help'") == (code == 2), err


@pytest.mark.parametrize(("option", "named"), [
    (["--pixel-size", "0"], "--pixel-size 0.0 is not a pixel size"),
    (["--pixel-size", "-0.5"], "--pixel-size -0.5 is not a pixel size"),
    (["--pixel-size", "nan"], "--pixel-size nan is not a pixel size"),
    (["--scale", "0"], "--scale 0.0 is not above 0"),
])
def test_a_patch_size_out_of_range_is_a_usage_error(capsys, monkeypatch, tmp_path, tiny_model,
                                                    option, named) -> None:
    """--pixel-size 0 mapped the patches with a slope of 90° everywhere, and --scale 0 exited 1
    without pointing to --help, where every other value out of range exits 2."""
    patch_folder(tmp_path / "set")
    got, out, err = run(capsys, monkeypatch, "predict", tmp_path / "set", "--model", tiny_model,
                        "--out", tmp_path / "o", *option)
    assert (got, out) == (2, "") and named in err and err.rstrip().endswith("--help'"), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "named"), [
    (["evaluate", "{set}/masks/p0.tif", "--image", "{set}"], "{set} is a folder: evaluate "
     "scores a raster or polygons, and slidemap predict {set} --out DIR scores"),
    (["evaluate", "{set}", "--prediction", "p.tif"], "{set} is a folder: evaluate scores"),
    (["predict", "{set}", "--out", "o", "--adapt"], "--adapt applies to scenes"),
    (["predict", "{set}", "--out", "o", "--adapt", "--format", "geojson"],
     "--format, --adapt apply to scenes"),
])
def test_a_patch_folder_where_a_scene_is_meant_says_what_takes_it(
        capsys, monkeypatch, tmp_path, args, named) -> None:
    """evaluate --image FOLDER said 'is a folder: pass a raster file', not that predict scores a
    patch folder; one scene-only option on a folder read '--adapt apply to scenes'."""
    monkeypatch.chdir(tmp_path)
    patch_folder(tmp_path / "set")
    got, out, err = run(capsys, monkeypatch, *(a.format(set="set") for a in args))
    assert (got, out) == (2, "") and named.format(set="set") in " ".join(err.split()), err


@pytest.mark.parametrize(("command", "option", "named"), [
    ("train", ["--seed", "-1"], "'--seed'"),
    ("crossval", ["--seeds=-1,0"], "--seeds '-1,0' holds a seed outside 0"),
])
def test_a_negative_seed_is_a_usage_error_naming_the_option(capsys, monkeypatch, tmp_path,
                                                            command, option, named) -> None:
    """train --seed -1 was blamed on the config ("config t.yaml: training.seed must be greater
    than or equal to 0", exit 1), whose seed was fine."""
    config = tmp_path / "t.yaml"
    config.write_text("data:\n  train: []\n")
    got, out, err = run(capsys, monkeypatch, command, config, "--out", tmp_path / "o", *option)
    assert (got, out) == (2, "") and named in err and "config" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["scene[bold].tif", "a[/b].tif", "[red]x[/red] [link=y].tif"])
def test_paths_with_markup_print_as_they_are(capsys, monkeypatch, tmp_path, name) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, monkeypatch, "predict", name, "--out", "o")
    assert code == 1 and err == f"error: image {name} does not exist: check the path\n"
    for quiet in ([], ["-q"]):  # the handler is installed once, however often main runs
        assert run(capsys, monkeypatch, *quiet, "--version")[0] == 0
    logging.getLogger("slidemap.anything").warning(f"{name} looks odd")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = cli._one_line_warning(warnings.showwarning)
        warnings.warn(SlidemapWarning(f"{name}\nhas no CRS"), stacklevel=1)
    assert capsys.readouterr().err == (f"warning: {name} looks odd\n"
                                       f"warning: {name} has no CRS\n")
    live = StringIO()  # while a progress bar is shown, messages go through its console
    monkeypatch.setattr(cli.STATE["messages"], "live", Console(file=live, width=200))
    logging.getLogger("slidemap").info(f"wrote {name}")
    assert live.getvalue() == f"wrote {name}\n"


def test_evaluate_prints_json_on_stdout_only_when_asked(capsys, monkeypatch,
                                                        tiny_scene) -> None:
    args = ("evaluate", tiny_scene["mask"], "--prediction", tiny_scene["mask"])
    code, out, err = run(capsys, monkeypatch, *args)
    assert code == 0 and out == "" and "landslide class vs scene_mask.tif" in err
    assert "1.0000" in err  # the table, on stderr
    code, out, err = run(capsys, monkeypatch, *args, "--json")
    assert code == 0 and json.loads(out)["f1"] == 1.0 and "1.0000" in err
    code, out, err = run(capsys, monkeypatch, "--quiet", *args, "--json")
    assert code == 0 and json.loads(out)["f1"] == 1.0
    assert err.count("\n") == 1 and "holds only 0 and 1 (a mask)" in err  # the warning alone


def test_quiet_and_verbose_predict(capsys, monkeypatch, tiny_scene, tiny_model,
                                   tmp_path: Path) -> None:
    """On a terminal too (a progress bar is drawn, named after the scene): -q prints nothing,
    -v adds debug lines."""
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    image = tiny_scene["image"].rename(tmp_path / "scene[bold].tif")
    args = ("predict", image, "--dem", tiny_scene["dem"], "--model", tiny_model)
    code, out, err = run(capsys, monkeypatch, "-q", *args, "--out", tmp_path / "quiet")
    assert (code, out, err) == (0, "", "")
    assert (tmp_path / "quiet" / "scene[bold]_mask.tif").exists()
    code, out, err = run(capsys, monkeypatch, "-v", *args, "--out", tmp_path / "verbose")
    assert code == 0 and out == ""
    assert "debug: PredictOptions(" in err and " predict done in " in err
    assert "landslides" in err and str(tmp_path / "verbose" / "scene[bold]_mask.tif") in err
    assert "predict scene[bold].tif" in err  # the progress bar's label, not read as markup


def test_every_option_of_every_command_is_in_the_readmes() -> None:
    """train and finetune --seed, predict --pixel-size and bench --sample were in --help only."""
    root = Path(__file__).parents[2]
    text = (root / "README.md").read_text() + (root / "configs" / "README.md").read_text()
    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    missing = [f"{name} {opt}" for name, command in group.commands.items()
               for param in command.params for opt in param.opts
               if opt.startswith("--") and opt != "--help"
               and not re.search(re.escape(opt) + r"(?![\w-])", text)]
    assert not missing, f"document in README.md: {missing}"
