"""Ensembles in one model file: trained as ``training.members``, averaged probabilities."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import RGB_SLOPE, rewrite_sidecar, tiny_bundle, tiny_run
from safetensors.torch import load_file

from slidemap import api
from slidemap.errors import SlidemapError
from slidemap.infer.ensemble import Predictor
from slidemap.io.modelfile import ModelBundle, load_model, save_model
from slidemap.models import ProbabilityAverage, build_model
from slidemap.schema.config import parse_config
from slidemap.train import members
from slidemap.train.loop import train
from slidemap.workflows import export
from slidemap.workflows.train import train_run


def fusion(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("fusion", 4, width=4, depth=2).eval()


def test_the_ensemble_returns_the_logit_of_the_mean_probability() -> None:
    parts = [fusion(1), fusion(2)]
    ensemble = ProbabilityAverage(parts).eval()
    x = torch.randn(2, 4, 20, 28)
    with torch.no_grad():
        mean = (torch.sigmoid(parts[0](x)) + torch.sigmoid(parts[1](x))) / 2
        out = ensemble(x)
    assert out.shape == (2, 1, 20, 28)
    torch.testing.assert_close(torch.sigmoid(out), mean, atol=1e-6, rtol=0)
    assert ensemble.stride == parts[0].stride
    names = set(ensemble.attention_maps)
    assert names == {f"member{i}.{name}" for i in (0, 1) for name in parts[0].attention_maps}


def ensemble_file(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Two width-4 U-Net files and one file holding both."""
    paths, nets = [], []
    for seed in (1, 2):
        bundle = tiny_bundle(seed=seed, std=[25.0] * 4, threshold=0.4)
        paths.append(save_model(bundle, tmp_path / f"m{seed}"))
        nets.append(bundle.model)
    both = ModelBundle(model=ProbabilityAverage(nets), architecture="unet", width=4,
                       options={"depth": 2}, inputs=RGB_SLOPE, mean=[60.0] * 4, std=[25.0] * 4,
                       threshold=0.4, members=2)
    return save_model(both, tmp_path / "both"), paths


def test_an_ensemble_file_predicts_as_its_members_averaged(tmp_path: Path) -> None:
    path, parts = ensemble_file(tmp_path)
    bundle = load_model(path)
    assert bundle.members == 2 and isinstance(bundle.model, ProbabilityAverage)
    assert all(key.startswith("members.") for key in load_file(str(path)))
    rng = np.random.default_rng(0)
    raw = [rng.uniform(0, 120, (4, 32, 32)).astype(np.float32) for _ in range(2)]
    valid = [np.ones((32, 32), bool) for _ in raw]
    one_file = Predictor([bundle], precision="fp32")(raw, valid)
    two_files = Predictor([load_model(p) for p in parts], precision="fp32")(raw, valid)
    for a, b in zip(one_file, two_files, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_one_member_pulled_out_of_an_ensemble_predicts_as_its_own_file(tmp_path: Path) -> None:
    path, parts = ensemble_file(tmp_path)
    alone = api.store_weights(path, tmp_path / "second", "float32", member=1).model
    bundle = load_model(alone)
    assert bundle.members == 1 and not isinstance(bundle.model, ProbabilityAverage)
    assert bundle.threshold == 0.4
    assert bundle.provenance["member_of"]["member"] == 1
    rng = np.random.default_rng(0)
    raw = [rng.uniform(0, 120, (4, 32, 32)).astype(np.float32)]
    valid = [np.ones((32, 32), bool)]
    pulled = Predictor([bundle], precision="fp32")(raw, valid)
    saved = Predictor([load_model(parts[1])], precision="fp32")(raw, valid)
    np.testing.assert_allclose(pulled[0], saved[0], atol=1e-6)


def trained_ensemble(tiny_scene: dict, tmp_path: Path) -> tuple[Path, dict]:
    """An ensemble file as ``training.members: 2`` (seeds 3, 4) saves it, its members untrained
    but recorded as the runs :func:`members.member_config` makes; and the run config."""
    config = parse_config(tiny_run(tiny_scene, members=2, seed=3))
    parts = []
    for index in (0, 1):
        bundle = tiny_bundle(seed=index)
        bundle.provenance = {"config": members.member_config(config, index).to_dict(),
                             "epoch": 5 + index, "validation": {"f1": 0.5 + index / 10}}
        parts.append(load_model(save_model(bundle, tmp_path / f"member-{index}")))
    ensemble = members.ensemble_bundle(parts, config)
    return save_model(ensemble, tmp_path / "both"), config.to_dict()


def test_a_member_pulled_out_alone_records_its_own_run(tiny_scene: dict,
                                                       tmp_path: Path) -> None:
    """Its provenance.config was the ensemble's (seed 3, members 2) for member 1 (seed 4)."""
    path, ensemble_config = trained_ensemble(tiny_scene, tmp_path)
    alone = load_model(api.store_weights(path, tmp_path / "second", "float32", member=1).model)
    own = load_model(tmp_path / "member-1.safetensors").provenance
    assert alone.provenance["config"] == own["config"] != ensemble_config
    assert alone.provenance["config"]["training"]["seed"] == 4
    assert alone.provenance["config"]["training"]["members"] == 1
    assert (alone.provenance["epoch"], alone.provenance["validation"]) == (6, {"f1": 0.6})
    source = alone.provenance["member_of"]
    assert (source["file"], source["member"], source["trained"]["seed"]) == (str(path), 1, 4)
    assert source["config"] == export.MEMBER_CONFIG
    assert "members" not in alone.provenance


def test_a_members_recorded_run_is_the_one_training_makes(tiny_scene: dict) -> None:
    """member_config_record, from the ensemble's plain-data record, agrees with the run
    member_config trains each member with."""
    config = parse_config(tiny_run(tiny_scene, members=3, seed=7))
    for index in range(3):
        assert (members.member_config_record(config.to_dict(), 7 + index)
                == members.member_config(config, index).to_dict())


def test_a_member_of_an_ensemble_without_member_runs_says_its_config_is_the_ensembles(
        tmp_path: Path) -> None:
    """An ensemble fine-tuned as one network records one run: the member keeps that config,
    said to be the ensemble's, and not the ensemble's validation figures."""
    path, _ = ensemble_file(tmp_path)
    recorded = {"config": {"training": {"seed": 0, "members": 1}}, "epoch": 3,
                "validation": {"f1": 0.7}}
    rewrite_sidecar(path, provenance=recorded)
    alone = load_model(api.store_weights(path, tmp_path / "second", "float32", member=1).model)
    assert alone.provenance["config"] == recorded["config"]
    assert alone.provenance["member_of"]["config"] == export.ENSEMBLE_CONFIG
    assert "validation" not in alone.provenance and "trained" not in alone.provenance["member_of"]


def test_a_member_exported_to_onnx_is_named_for_it(tmp_path: Path) -> None:
    path, _ = ensemble_file(tmp_path)
    exported = api.export_onnx(path, member=0).onnx
    assert exported == tmp_path / "both-member-0.onnx" and exported.exists()
    assert not (tmp_path / "both.onnx").exists()


def test_a_member_exported_beside_its_ensemble_is_not_taken_for_it(tmp_path: Path) -> None:
    """The member's ONNX recorded the ensemble file's SHA-256, so written as NAME.onnx it was
    the ensemble's up-to-date export for ``predict --backend onnx``, which ran one member."""
    onnxfile = pytest.importorskip("slidemap.io.onnxfile")  # onnx is an optional extra
    path, _ = ensemble_file(tmp_path)
    exported = api.export_onnx(path, out=tmp_path / "both.onnx", member=0).onnx
    assert not onnxfile.is_current(exported, load_model(path))
    assert onnxfile.read_metadata(exported)["weights_sha256"] == ""


@pytest.mark.parametrize(("member", "message"), [(2, "holds 2 networks: --member takes 0 to 1"),
                                                 (-1, "holds 2 networks")])
def test_a_member_the_ensemble_lacks_is_refused(tmp_path: Path, member: int,
                                                message: str) -> None:
    path, parts = ensemble_file(tmp_path)
    with pytest.raises(SlidemapError, match=message):
        api.store_weights(path, tmp_path / "none", "float32", member=member)
    with pytest.raises(SlidemapError, match="one network, not an ensemble"):
        api.store_weights(parts[0], tmp_path / "none", "float32", member=0)
    assert not list(tmp_path.glob("none*"))


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_a_bad_member_count_in_a_sidecar_is_refused(tmp_path: Path, value: object) -> None:
    path, _ = ensemble_file(tmp_path)
    rewrite_sidecar(path, members=value)
    with pytest.raises(SlidemapError, match="members must be a whole number"):
        load_model(path)


def test_files_without_a_member_count_hold_one_network(tiny_model: Path) -> None:
    rewrite_sidecar(tiny_model, members=None)
    assert load_model(tiny_model).members == 1


@pytest.mark.slow  # trains two members: 12 s of CPU
def test_training_members_trains_one_seed_each_and_saves_their_ensemble(
        tiny_scene: dict, tmp_path: Path) -> None:
    raw = tiny_run(tiny_scene, epochs=1, members=2, threads=1, seed=3)
    train_run(parse_config(raw), tmp_path / "run")
    ensemble = load_model(tmp_path / "run" / "model.safetensors")
    assert ensemble.members == 2
    assert [m["seed"] for m in ensemble.provenance["members"]] == [3, 4]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["members"]) == 2 and summary["wall_seconds"] > 0
    # member 1 is exactly the plain recipe at seed 4
    single = dict(raw, training=dict(raw["training"], members=1, seed=4))
    alone = load_model(train(parse_config(single), tmp_path / "alone"))
    member = load_model(tmp_path / "run" / "member-1" / "model.safetensors")
    for key, value in alone.model.state_dict().items():
        torch.testing.assert_close(member.model.state_dict()[key], value)
        torch.testing.assert_close(ensemble.model.state_dict()[f"members.1.{key}"], value)
    assert (tmp_path / "run" / "member-1" / "train.log").read_text().strip()
    pulled = export.member_of(ensemble, 1).provenance
    assert {key: pulled[key] for key in ("config", "epoch", "validation")} == {
        key: member.provenance[key] for key in ("config", "epoch", "validation")}
    with pytest.raises(SlidemapError, match="already holds a model"):
        train_run(parse_config(raw), tmp_path / "run")


def test_an_ensemble_over_a_fine_tuning_drops_its_figures(
        tiny_scene: dict, tmp_path: Path) -> None:
    """finetune.json gives a fine-tuned model's figures before and after: an ensemble that
    replaces that model with --overwrite must not keep them beside its own model file."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "finetune.json").write_text('{"init": "earlier.safetensors", "after": {"f1": 0.9}}')
    raw = tiny_run(tiny_scene, epochs=1, members=2, threads=1)
    train_run(parse_config(raw), run, overwrite=True)
    assert load_model(run / "model.safetensors").members == 2
    assert not (run / "finetune.json").exists()


def test_members_train_side_by_side_up_to_two_threads_per_core(
        tiny_scene: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(members.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    def at(**training: object) -> int:
        return members.parallel_members(parse_config(tiny_run(tiny_scene, **training)))
    assert at(members=3, threads=1) == 3
    assert at(members=6, threads=1) == 6  # two per core: all at once, no idle last round
    assert at(members=9, threads=1) == 4  # beyond that, one per core
    assert at(members=3, threads=2) == 3
    assert at(members=5, threads=2) == 2
    assert at(members=3, threads=8) == 1
    assert at(members=3) == 1  # without threads a run uses every core


@pytest.mark.parametrize("value", [0, "two", True, 1.5])
def test_bad_member_counts_in_a_config_are_refused(tiny_scene: dict, value: object) -> None:
    with pytest.raises(SlidemapError, match=r"'?members'? must be"):
        parse_config(tiny_run(tiny_scene, members=value))


def test_one_network_runs_refuse_members(tiny_scene: dict, tmp_path: Path) -> None:
    config = parse_config(tiny_run(tiny_scene, members=2))
    with pytest.raises(SlidemapError, match="fine-tuning and self-training train one network"):
        train(config, tmp_path / "run")


class InProcessPool(ThreadPoolExecutor):
    """The members' process pool run in this process, one member after another, so a test
    sees the runs train_members starts without spawning interpreters."""

    def __init__(self, workers: int, mp_context: object = None,
                 initializer: object = None) -> None:
        super().__init__(1)


def test_a_resumed_ensemble_starts_the_members_its_stop_left_unstarted(
        tiny_scene: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped while member 0 trained and member 1 waited for a core (threads unset: one at a
    time), --resume found nothing to resume in member-1 and a rerun without it refused
    member-0's checkpoint: only --overwrite, which threw member 0's epochs away, went on."""
    monkeypatch.setattr(members, "ProcessPoolExecutor", InProcessPool)
    config = parse_config(tiny_run(tiny_scene, epochs=1, members=2))
    run = tmp_path / "run"
    with pytest.raises(SlidemapError, match=r"nothing to resume in .*run \(no member-K"):
        train_run(config, run, resume=True)
    train(members.member_config(config, 0), run / "member-0")
    first = (run / "member-0" / "model.safetensors").read_bytes()
    (run / "member-1").mkdir()
    (run / "member-1" / "history.csv").write_text("epoch,train_loss\n")  # stopped mid-epoch
    train_run(config, run, resume=True)
    assert load_model(run / "model.safetensors").members == 2
    assert (run / "member-0" / "model.safetensors").read_bytes() == first
    assert (run / "member-1" / "summary.json").exists()


def say_and_sleep(path: str) -> None:
    """A member's stand-in in a spawned process: says it runs, then trains for two minutes."""
    Path(path).touch()
    time.sleep(120)


def test_a_stopped_ensemble_stops_its_members(tmp_path: Path, ctrl_c: None) -> None:
    """SIGTERM (timeout, a scheduler's time limit) reaches the command alone: it waited for
    its members to train to their last epoch, then exited 143 without the ensemble."""
    started = [tmp_path / f"member-{index}" for index in (0, 1)]
    bystander = get_context("spawn").Process(target=time.sleep, args=(60,))  # the caller's own
    bystander.start()
    with ProcessPoolExecutor(2, mp_context=get_context("spawn"),
                             initializer=members.stop_on_signal) as pool:
        futures = [pool.submit(say_and_sleep, str(path)) for path in started]
        deadline = time.monotonic() + 600  # spawning imports torch: slow on a loaded machine
        while not all(path.exists() for path in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(path.exists() for path in started)  # both members run when stopped
        stop = time.monotonic()
        # a real signal, as the command's SIGTERM raises Ctrl-C's exception in the waiting thread
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            members.collect(futures, spared={bystander})
    assert time.monotonic() - stop < 30
    assert all(isinstance(future.exception(), KeyboardInterrupt) for future in futures)
    assert bystander.is_alive()  # a process that is not a member is left alone
    bystander.terminate()
    bystander.join()
