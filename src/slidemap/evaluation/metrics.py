"""Segmentation metrics from one confusion matrix accumulated over all valid pixels of a run.

Per-tile averaging over-weights small or empty tiles, so every figure here comes from counts summed
over the whole evaluation set. AUC comes from probability histograms, so it streams too.
"""

from __future__ import annotations

import numpy as np

AUC_BINS = 1000


class BinaryConfusion:
    """Accumulates TP/FP/FN/TN of the landslide class and probability histograms per class."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.counts = np.zeros(4, dtype=np.int64)  # tp, fp, fn, tn
        self.pos_hist = np.zeros(AUC_BINS, dtype=np.int64)
        self.neg_hist = np.zeros(AUC_BINS, dtype=np.int64)

    def update(self, prob: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add pixels where ``valid`` (and target ≠ 255); ``target`` is 0/1 (255 = ignore)."""
        keep = target != 255
        if valid is not None:
            keep &= valid
        keep &= np.isfinite(prob)
        p = prob[keep]
        t = target[keep].astype(bool)
        pred = p >= self.threshold
        self.counts += np.array([
            np.count_nonzero(pred & t), np.count_nonzero(pred & ~t),
            np.count_nonzero(~pred & t), np.count_nonzero(~pred & ~t),
        ], dtype=np.int64)
        bins = np.clip((p * AUC_BINS).astype(np.int64), 0, AUC_BINS - 1)
        self.pos_hist += np.bincount(bins[t], minlength=AUC_BINS)
        self.neg_hist += np.bincount(bins[~t], minlength=AUC_BINS)

    def add(self, other: BinaryConfusion) -> BinaryConfusion:
        """Fold ``other``'s counts and histograms into this matrix (pooling blocks or seeds);
        the threshold must be the same, or the counts would mean different things."""
        if other.threshold != self.threshold:
            raise ValueError(f"cannot pool confusions at thresholds {self.threshold} and "
                             f"{other.threshold}")
        self.counts += other.counts
        self.pos_hist += other.pos_hist
        self.neg_hist += other.neg_hist
        return self

    def metrics(self) -> dict[str, float]:
        tp, fp, fn, tn = (int(c) for c in self.counts)
        scores = landslide_scores(tp, fp, fn)
        return {
            **scores,
            "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
            "miou": mean_iou(tp, fp, fn, tn),
            "auc": self.auc(),
            "pixels": tp + fp + fn + tn,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        }

    def at_threshold(self, threshold: float) -> dict[str, float]:
        """Precision, recall, F1 and IoU had the threshold been ``threshold`` (to 1/AUC_BINS),
        from the histograms, so a threshold can be chosen after one pass over the data."""
        first = int(np.clip(round(threshold * AUC_BINS), 0, AUC_BINS))
        tp, fp, fn, _ = self.counts_at(threshold)
        return {"threshold": first / AUC_BINS, **landslide_scores(tp, fp, fn)}

    def counts_at(self, threshold: float) -> tuple[int, int, int, int]:
        """(tp, fp, fn, tn) at another threshold (to 1/AUC_BINS), from the histograms."""
        first = int(np.clip(round(threshold * AUC_BINS), 0, AUC_BINS))
        tp, fp = int(self.pos_hist[first:].sum()), int(self.neg_hist[first:].sum())
        return tp, fp, int(self.pos_hist.sum()) - tp, int(self.neg_hist.sum()) - fp

    def sweep(self, thresholds: np.ndarray | None = None) -> list[dict[str, float]]:
        """``at_threshold`` over a grid (default 0.05, 0.10, …, 0.95)."""
        grid = np.arange(1, 20) / 20 if thresholds is None else thresholds
        return [self.at_threshold(float(t)) for t in grid]

    def auc(self) -> float:
        """Area under the ROC curve by the Mann–Whitney count, ties within a bin counted half."""
        pos, neg = self.pos_hist.astype(np.float64), self.neg_hist.astype(np.float64)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        neg_below = np.cumsum(neg) - neg
        return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def landslide_scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall, F1 and IoU of the landslide class from its counts."""
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "iou": _ratio(tp, tp + fp + fn)}


def mean_iou(tp: int, fp: int, fn: int, tn: int) -> float:
    """The mean IoU of the classes present in the truth or the prediction (landslide, then
    background as the positive class): a class absent from both has no IoU (0/0), and counting
    it as 0 gave a faultless map of ground without landslides an mIoU of 0.5."""
    ious = [_ratio(hits, hits + fp + fn) for hits in (tp, tn) if hits + fp + fn > 0]
    return sum(ious) / len(ious) if ious else 0.0


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den else 0.0
