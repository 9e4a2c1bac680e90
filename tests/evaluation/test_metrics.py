"""Metrics from one confusion matrix, checked against hand-computed figures."""

import numpy as np
import pytest

from slidemap.evaluation.metrics import BinaryConfusion


def test_metrics_match_hand_computed_confusion() -> None:
    # 10 valid pixels: TP=3, FP=1, FN=2, TN=4; two more pixels are ignored (255).
    target = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 255, 255], dtype=np.uint8)
    prob = np.array([.9, .8, .7, .6, .4, .1, .3, .2, .1, .0, .99, .0], dtype=np.float32)
    confusion = BinaryConfusion(threshold=0.5)
    confusion.update(prob, target)
    m = confusion.metrics()
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 2, 4)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert m["iou"] == pytest.approx(3 / 6)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["miou"] == pytest.approx((3 / 6 + 4 / 7) / 2)
    # AUC by pairs: positives .9 .8 .7 .4 .1 vs negatives .6 .3 .2 .1 .0 win
    # 5 + 5 + 5 + 4 + 1.5 = 20.5 of 25 pairs (the .1/.1 tie counts half).
    assert m["auc"] == pytest.approx(20.5 / 25, abs=1e-9)


def test_accumulating_in_pieces_equals_one_pass() -> None:
    rng = np.random.default_rng(1)
    prob = rng.random(1000).astype(np.float32)
    target = (rng.random(1000) < 0.3).astype(np.uint8)
    whole = BinaryConfusion()
    whole.update(prob, target)
    parts = BinaryConfusion()
    for chunk in np.array_split(np.arange(1000), 7):
        parts.update(prob[chunk], target[chunk])
    assert whole.metrics() == parts.metrics()


def test_valid_mask_and_nan_probabilities_are_left_out() -> None:
    confusion = BinaryConfusion()
    confusion.update(np.array([np.nan, 1.0, 0.0]), np.array([1, 1, 0], dtype=np.uint8),
                     valid=np.array([True, True, False]))
    # the one pixel kept is the valid, finite hit (a count of 1 alone passed keeping the other)
    m = confusion.metrics()
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["pixels"]) == (1, 0, 0, 0, 1)


def test_threshold_sweep_matches_scoring_at_each_threshold() -> None:
    rng = np.random.default_rng(3)
    prob = rng.random((64, 64)).astype(np.float32)
    target = (rng.random((64, 64)) < prob).astype(np.uint8)
    target[:4] = 255
    once = BinaryConfusion(0.5)
    once.update(prob, target)
    for row in once.sweep(np.array([0.2, 0.35, 0.5, 0.8])):
        direct = BinaryConfusion(row["threshold"])
        direct.update(prob, target)
        expected = direct.metrics()
        for key in ("precision", "recall", "f1", "iou"):
            assert row[key] == pytest.approx(expected[key], abs=1e-12)
    assert [r["threshold"] for r in once.sweep()] == pytest.approx(np.arange(1, 20) / 20)


@pytest.mark.parametrize("label", [0, 1])
def test_miou_leaves_out_a_class_absent_from_truth_and_prediction(label: int) -> None:
    # ground without landslides mapped faultlessly (or a landslide covering every pixel): the
    # absent class has no IoU, and averaging it in as 0 gave 0.5
    confusion = BinaryConfusion()
    confusion.update(np.full(6, 0.9 if label else 0.1, dtype=np.float32),
                     np.full(6, label, dtype=np.uint8))
    assert confusion.metrics()["miou"] == 1.0
    wrong = BinaryConfusion()  # one wrong pixel: both classes present, both averaged
    wrong.update(np.array([0.1, 0.1, 0.9], dtype=np.float32), np.zeros(3, dtype=np.uint8))
    assert wrong.metrics()["miou"] == pytest.approx((0 + 2 / 3) / 2)
