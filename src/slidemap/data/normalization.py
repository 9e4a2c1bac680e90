"""Per-band statistics and normalisation, including separated (target-domain) normalisation.

A model is normally trained and applied with the statistics of its training data, stored with the
model. On a new site the imagery often differs in brightness, season or sensor; *separated
normalisation* instead computes the statistics from the target data itself (all patches of the
new site, or the whole scene to predict) and normalises it with those, so that each domain is
centred and scaled on its own. It needs no labels and no model: run :func:`compute_stats` on the
target samples and pass the result to :func:`normalise`.

Statistics are streamed (per-chunk mean and sum of squared deviations in float64, merged with
Chan's formula), so any number of patches or scene windows can be folded in without holding them
in memory, and the result does not suffer the cancellation of naive sum/sum-of-squares.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from slidemap.errors import SlidemapError

STD_FLOOR = 1e-6
IGNORE = 255


@dataclass(frozen=True)
class BandStats:
    """Mean and (population) standard deviation of each band, as plain floats for JSON."""

    mean: list[float]
    std: list[float]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise SlidemapError(
                f"band statistics have {len(self.mean)} means but {len(self.std)} stds: "
                "give one mean and one std per band"
            )

    @property
    def bands(self) -> int:
        return len(self.mean)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> BandStats:
        try:
            return cls(mean=[float(v) for v in data["mean"]], std=[float(v) for v in data["std"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise SlidemapError(
                f"band statistics {data!r} are malformed: expected {{'mean': [...], 'std': [...]}}"
            ) from exc


class StatsAccumulator:
    """Streaming per-band mean/std over (C, H, W) arrays, skipping invalid pixels per band."""

    def __init__(self) -> None:
        self.count: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, array: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Fold in ``array`` (C, H, W), skipping non-finite values and pixels False in ``valid``."""
        x = np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1)
        use = np.isfinite(x)
        if valid is not None:
            use &= np.asarray(valid, dtype=bool).reshape(1, -1)
        count = use.sum(axis=1).astype(np.float64)
        total = np.where(use, x, 0.0).sum(axis=1)
        mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        m2 = (np.where(use, x - mean[:, None], 0.0) ** 2).sum(axis=1)
        if self.count is None or self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        if count.shape != self.count.shape:
            raise SlidemapError(
                f"an array with {count.size} bands was added to statistics of {self.count.size} "
                "bands: every input must have the same bands"
            )
        n = self.count + count
        delta = mean - self.mean
        safe_n = np.where(n > 0, n, 1.0)
        self.mean = self.mean + delta * count / safe_n
        self.m2 = self.m2 + m2 + delta**2 * self.count * count / safe_n
        self.count = n

    def result(self) -> BandStats:
        if self.count is None or self.mean is None or self.m2 is None:
            raise SlidemapError("no data to compute band statistics from: pass at least one array")
        empty = np.flatnonzero(self.count == 0)
        if empty.size:
            raise SlidemapError(
                f"band {empty[0] + 1} has no valid pixels: statistics need valid (non-NaN, "
                "unmasked) pixels in every band"
            )
        std = np.sqrt(self.m2 / self.count)
        return BandStats(mean=self.mean.tolist(), std=std.tolist())


def compute_stats(
    items: Iterable[np.ndarray | dict],
    valid: Iterable[np.ndarray | None] | None = None,
    keys: str | Sequence[str] = ("image",),
) -> BandStats:
    """Per-band statistics of many (C, H, W) arrays or sample dicts, in one streaming pass.

    For samples, the arrays under ``keys`` are stacked along channels (e.g. ``("image", "dem",
    "slope")`` for the model input) and pixels are skipped where the sample's ``valid`` is False
    or its ``mask`` is 255. ``valid`` optionally gives an (H, W) bool mask per item as well.
    NaN pixels are always skipped, per band. Use it on training data, or on the target data itself
    for separated normalisation (see the module docstring).
    """
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    acc = StatsAccumulator()
    masks = iter(valid) if valid is not None else None
    for item in items:
        given = next(masks, None) if masks is not None else None
        array, use = _array_and_valid(item, keys)
        if given is not None:
            use = given if use is None else use & given
        acc.update(array, use)
    return acc.result()


def normalise(x: np.ndarray, stats: BandStats, valid: np.ndarray | None = None) -> np.ndarray:
    """(x - mean) / std per band as float32, std floored at 1e-6; invalid pixels become 0.

    Invalid means non-finite in ``x`` or False in ``valid`` (H, W); 0 is the mean after
    normalisation, the most neutral value a network can see there.
    """
    if x.shape[0] != stats.bands:
        raise SlidemapError(
            f"input has {x.shape[0]} bands but the statistics have {stats.bands}: "
            "use statistics computed on the same bands"
        )
    mean = np.asarray(stats.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.maximum(np.asarray(stats.std, dtype=np.float32), STD_FLOOR).reshape(-1, 1, 1)
    out = (np.asarray(x, dtype=np.float32) - mean) / std
    out[~np.isfinite(out)] = 0.0
    if valid is not None:
        out[:, ~np.asarray(valid, dtype=bool)] = 0.0
    return out


def _array_and_valid(item: np.ndarray | dict, keys: Sequence[str]
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    if not isinstance(item, dict):
        return np.asarray(item), None
    missing = [k for k in keys if k not in item]
    if missing:
        raise SlidemapError(
            f"sample {item.get('name', '?')} has no {', '.join(missing)}: "
            "compute statistics only over channels every sample has"
        )
    array = np.concatenate([np.asarray(item[k], dtype=np.float64) for k in keys], axis=0)
    use = item.get("valid")
    if "mask" in item:
        labelled = item["mask"] != IGNORE
        use = labelled if use is None else use & labelled
    return array, use
