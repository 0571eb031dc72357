"""Segmentation accuracy metrics (instance matching at an IoU threshold).

Examples
--------
>>> import numpy as np
>>> gt = np.zeros((8, 8), np.uint32); gt[1:4, 1:4] = 1; gt[5:8, 5:8] = 2
>>> pred = gt.copy(); pred[5:8, 5:8] = 0
>>> m = match_labels(gt, pred)
>>> (m.tp, m.fp, m.fn)
(1, 0, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from erquant.backend import to_numpy


@dataclass(frozen=True)
class MatchResult:
    """Counts of an instance matching; add results of several images with ``+``."""

    tp: int
    fp: int
    fn: int

    @property
    def n_true(self) -> int:
        return self.tp + self.fn

    @property
    def n_pred(self) -> int:
        return self.tp + self.fp

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else 1.0

    @property
    def recall(self) -> float:
        return self.tp / self.n_true if self.n_true else 1.0

    def __add__(self, other: MatchResult) -> MatchResult:
        return MatchResult(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    ids, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if ids[0] != 0:  # no background pixel: shift so that 0 stays "background"
        inv = inv + 1
        return inv, len(ids)
    return inv, len(ids) - 1


def iou_pairs(true: np.ndarray, pred: np.ndarray):
    """Return (true_index, pred_index, iou) for all overlapping object pairs.

    Indices refer to compacted label ids (1..n in sorted order of the original ids).
    """
    t, nt = _compact(np.asarray(to_numpy(true)))
    p, np_ = _compact(np.asarray(to_numpy(pred)))
    if t.shape != p.shape:
        raise ValueError(f"label images differ in shape: {t.shape} vs {p.shape}")
    area_t = np.bincount(t.ravel(), minlength=nt + 1)
    area_p = np.bincount(p.ravel(), minlength=np_ + 1)
    both = (t > 0) & (p > 0)
    key = t[both].astype(np.int64) * (np_ + 1) + p[both]
    keys, inter = np.unique(key, return_counts=True)
    ti, pi = keys // (np_ + 1), keys % (np_ + 1)
    iou = inter / (area_t[ti] + area_p[pi] - inter)
    return ti, pi, iou, nt, np_


def match_labels(true, pred, *, iou_threshold: float = 0.5) -> MatchResult:
    """Match predicted to true instances; a pair matches when IoU > ``iou_threshold``.

    With a threshold ≥ 0.5 each object takes part in at most one match, so the
    matching is unique without an assignment step.
    """
    if iou_threshold < 0.5:
        raise ValueError("iou_threshold must be >= 0.5 for a unique matching")
    ti, pi, iou, nt, np_ = iou_pairs(true, pred)
    tp = int(np.count_nonzero(iou > iou_threshold))
    return MatchResult(tp=tp, fp=np_ - tp, fn=nt - tp)


def matched_pairs(true, pred, *, iou_threshold: float = 0.5):
    """Original (true_label, pred_label) ids of matched pairs, as two arrays."""
    true = np.asarray(to_numpy(true))
    pred = np.asarray(to_numpy(pred))
    ti, pi, iou, _, _ = iou_pairs(true, pred)
    keep = iou > iou_threshold
    tids = np.unique(true)
    pids = np.unique(pred)
    tids = tids[tids != 0] if tids.size and tids[0] == 0 else tids
    pids = pids[pids != 0] if pids.size and pids[0] == 0 else pids
    return tids[ti[keep] - 1], pids[pi[keep] - 1]
