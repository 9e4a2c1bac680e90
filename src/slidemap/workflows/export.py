"""``slidemap export``: a model file to ONNX, or (``--weights``) stored again with smaller
weights."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from slidemap.errors import SlidemapError
from slidemap.extras import require
from slidemap.io.atomic import check_outputs, make_output_dir
from slidemap.io.modelfile import (
    ModelBundle,
    check_weights_dtype,
    load_model,
    model_card,
    model_paths,
    model_source,
    output_model_paths,
    save_model,
)
from slidemap.models.ensemble import ProbabilityAverage
from slidemap.train.members import member_config_record
from slidemap.workflows.inputs import is_installed_model

# What a member's provenance.config is, in member_of.config.
MEMBER_CONFIG = "this network's own run: the ensemble's config with its seed, one network"
ENSEMBLE_CONFIG = ("the ensemble's run config: the ensemble file records no run of this "
                   "network alone")


@dataclass(frozen=True)
class OnnxExport:
    onnx: Path
    opset: int
    stride: int  # input height and width must be multiples of it
    channels: int  # normalised input channels


@dataclass(frozen=True)
class StoredWeights:
    model: Path
    weights_dtype: str
    bytes: int
    bytes_before: int


def export_onnx(model: Path, out: Path | None = None, overwrite: bool = False,
                member: int | None = None) -> OnnxExport:
    """Export ``model`` (or network ``member`` of an ensemble) to ONNX at ``out`` (default:
    NAME.onnx beside it, NAME-member-K.onnx for a member; in the current folder for a model
    shipped inside an installed slidemap). ``model`` may be a shipped model's bare name."""
    for module in ("onnx", "onnxruntime"):
        require(module, "onnx", "exporting to ONNX")
    # After the check: onnx is an optional extra, imported only once it is known to be there.
    from slidemap.io import onnxfile

    model = model_source(model)
    bundle = load_model(model)
    if member is not None:
        bundle = member_of(bundle, member)
    beside = onnxfile.onnx_path_for(model)
    target = out or (Path.cwd() / beside.name if is_installed_model(model) else beside)
    if out is None and member is not None:
        target = target.with_name(f"{target.stem}-member-{member}.onnx")
    check_outputs([target], list(model_paths(model)), overwrite)
    make_output_dir(target.parent)
    onnxfile.export_onnx(bundle, target, overwrite)
    return OnnxExport(target, onnxfile.OPSET, onnxfile.model_stride(bundle.model),
                      len(bundle.inputs.channels))


def store_weights(model: Path, out: Path, weights_dtype: str, overwrite: bool = False,
                  member: int | None = None) -> StoredWeights:
    """Save ``model`` again at ``out`` with its weights stored as ``weights_dtype`` (float32,
    float16, int8 or int4): the same network and sidecar in a smaller file; with ``member``,
    that network of an ensemble alone."""
    check_weights_dtype(weights_dtype)  # an unknown name fails before anything is read
    model = model_source(model)
    bundle = replace(load_model(model), card=model_card(model))
    if member is not None:
        bundle = member_of(bundle, member)
    inputs, targets = list(model_paths(model)), list(output_model_paths(out))
    check_outputs(targets, inputs, overwrite)
    make_output_dir(targets[0].parent)
    written = save_model(replace(bundle, weights_dtype=weights_dtype), out, overwrite)
    return StoredWeights(written, weights_dtype, written.stat().st_size,
                         inputs[0].stat().st_size)


def member_of(bundle: ModelBundle, member: int) -> ModelBundle:
    """Network ``member`` (0 = the first) of an ensemble as a model of its own, to run, fine-tune
    or compare alone. Its inputs, windows, scales and threshold are the ensemble's; its card is
    not kept, since the card's figures are the ensemble's; nor is its path, since the member is
    not that file's weights: an ONNX export of it recorded the ensemble file's SHA-256, and
    ``predict --backend onnx`` with the ensemble then ran that one member in its place."""
    network = bundle.model
    if not isinstance(network, ProbabilityAverage):
        raise SlidemapError(f"{bundle.path} is one network, not an ensemble: drop --member")
    if not 0 <= member < bundle.members:
        raise SlidemapError(f"{bundle.path} holds {bundle.members} networks: --member takes "
                            f"0 to {bundle.members - 1}, got {member}")
    return replace(bundle, model=network.member_models()[member], members=1, card={},
                   provenance=member_provenance(bundle, member), path=None)


def member_provenance(bundle: ModelBundle, member: int) -> dict:
    """What network ``member`` records of how it came about, so that its file describes it and
    not the ensemble: ``config`` is the run that trained it (the ensemble's with its own seed
    and one network, as ``training.members`` trains them), with its own epoch and validation
    figures; ``member_of`` names the ensemble file and says which run ``config`` is. An
    ensemble that records no run per member (one fine-tuned as one network) keeps its config,
    said there to be the ensemble's, and not its validation figures, which are the ensemble's
    (as its card is)."""
    provenance = {key: value for key, value in bundle.provenance.items()
                  if key not in ("members", "validation")}
    source: dict = {"file": str(bundle.path), "member": member, "config": ENSEMBLE_CONFIG}
    record = _member_record(bundle, member)
    if record is None:
        return {**provenance, "member_of": source}
    source["trained"] = record
    config, seed = provenance.get("config"), record.get("seed")
    if not (isinstance(config, dict) and isinstance(config.get("training"), dict)
            and isinstance(seed, int)):
        return {**provenance, "member_of": source}
    own: dict = {"config": member_config_record(config, seed)}
    for key in ("epoch", "validation"):
        if record.get(key) is not None:
            own[key] = record[key]
    return {**provenance, **own, "member_of": {**source, "config": MEMBER_CONFIG}}


def _member_record(bundle: ModelBundle, member: int) -> dict | None:
    """The ensemble's record of member ``member``'s run (seed, epoch, ...), if it holds one per
    network."""
    records = bundle.provenance.get("members")
    if not (isinstance(records, list) and len(records) == bundle.members):
        return None
    return records[member] if isinstance(records[member], dict) else None
