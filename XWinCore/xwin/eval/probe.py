"""`xwin eval probe`: how useful are the encoder's features for a finding on real labelled CXRs?

Linear probing (frozen mean-token embeddings → L2-regularised logistic regression) and k-shot fine-tuning (encoder +
linear head, k positives and k negatives per fold), both with patient-level folds (no patient in two folds); AUROC of
the pooled out-of-fold scores with a percentile bootstrap interval. Compared across encoders: the model, a random
initialisation and any extra checkpoints (e.g. an MIM-only ablation).
"""
from __future__ import annotations

import copy
import csv
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from ..data.cxr import load_cxrs
from ..errors import XWinInputError

NORMAL = r"^(No Finding|Normal)$"


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties averaged)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_ci(labels, scores, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC (resampling images)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(len(labels), size=len(labels))
        v = auroc(labels[idx], scores[idx])
        if np.isfinite(v):
            values.append(v)
    lo, hi = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def read_labels(csv_path: str | Path, images: str | Path, positive: str | None = None,
                where: dict[str, str] | None = None) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(files, binary labels, patient ids) from a labels CSV (columns filename, finding, patient_id).

    A row is positive when its finding matches the regex ``positive`` (default: anything but No Finding/Normal).
    Rows without a patient id get their own (one image = one patient).
    """
    rows = []
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise XWinInputError(csv_path, f"cannot read labels: {exc.strerror or exc}") from None
    for key in ("filename", "finding"):
        if rows and key not in rows[0]:
            raise XWinInputError(csv_path, f"labels CSV lacks the column '{key}'")
    rows = [r for r in rows if all(r.get(k) == v for k, v in (where or {}).items())]
    if not rows:
        raise XWinInputError(csv_path, "no labelled images left to probe")
    files = [Path(images) / r["filename"] for r in rows]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise XWinInputError(missing[0], f"image listed in {Path(csv_path).name} not found")
    if positive is None:
        labels = np.array([re.match(NORMAL, r["finding"]) is None for r in rows])
    else:
        labels = np.array([re.search(positive, r["finding"]) is not None for r in rows])
    patients = np.array([r.get("patient_id") or f"image:{r['filename']}" for r in rows])
    return files, labels, patients


def patient_folds(labels: np.ndarray, patients: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index per image; each patient's images share a fold; positives spread round-robin across folds."""
    rng = np.random.default_rng(seed)
    unique = np.unique(patients)
    rng.shuffle(unique)
    pos = {p for p in unique if labels[patients == p].any()}
    order = [p for p in unique if p in pos] + [p for p in unique if p not in pos]
    fold_of = {p: i % k for i, p in enumerate(order)}
    return np.array([fold_of[p] for p in patients])


@torch.no_grad()
def embeddings(encoder: torch.nn.Module, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([encoder(images[i:i + batch]).mean(dim=1) for i in range(0, len(images), batch)])


def logistic_probe(train_x, train_y, test_x, weight_decay: float = 1e-3, iters: int = 200) -> np.ndarray:
    """Scores of an L2-regularised logistic regression fitted with L-BFGS on standardised features."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    x, t = (train_x - mu) / sd, (test_x - mu) / sd
    y = torch.as_tensor(train_y, dtype=torch.float32)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (t @ w + b).numpy()


def finetune_scores(encoder, train_x, train_y, test_x, steps: int = 30, lr: float = 1e-4, seed: int = 0):
    """k-shot fine-tuning: a copy of the encoder plus a linear head, AdamW on the few labelled images."""
    torch.manual_seed(seed)
    enc = copy.deepcopy(encoder).train()
    with torch.no_grad():
        dim = enc(train_x[:1]).shape[-1]
    head = torch.nn.Linear(dim, 1)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.05)
    y = torch.as_tensor(train_y, dtype=torch.float32)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(head(enc(train_x).mean(dim=1))[:, 0], y)
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        return head(embeddings(enc, test_x))[:, 0].numpy()


def probe(encoders: dict[str, torch.nn.Module], files, labels, patients, size: int, folds: int = 5,
          shots: tuple[int, ...] = (5,), seed: int = 0) -> dict:
    """AUROC (+ 95 % bootstrap interval) per encoder: linear probe and k-shot fine-tuning, patient-level folds."""
    images = torch.from_numpy(load_cxrs(files, size))[:, None]
    fold = patient_folds(labels, patients, folds, seed)
    rng = np.random.default_rng(seed)
    out = {"n_images": int(len(labels)), "n_positive": int(labels.sum()), "n_patients": int(len(set(patients))),
           "folds": folds, "encoders": {}}
    for name, enc in encoders.items():
        enc = enc.eval()
        feats = embeddings(enc, images)
        results = {}
        scores = np.zeros(len(labels))
        for f in range(folds):
            tr, te = fold != f, fold == f
            scores[te] = logistic_probe(feats[tr], labels[tr], feats[te])
        results["linear"] = _summary(labels, scores, seed)
        for k in shots:
            scores = np.zeros(len(labels))
            for f in range(folds):
                tr, te = np.flatnonzero(fold != f), fold == f
                pick = np.concatenate([rng.permutation(tr[labels[tr]])[:k], rng.permutation(tr[~labels[tr]])[:k]])
                scores[te] = finetune_scores(enc, images[pick], labels[pick], images[te], seed=seed)
            results[f"{k}_shot"] = _summary(labels, scores, seed)
        out["encoders"][name] = results
    return out


def _summary(labels, scores, seed) -> dict:
    lo, hi = bootstrap_ci(labels, scores, seed=seed)
    return {"auroc": round(auroc(labels, scores), 4), "ci95": [round(lo, 4), round(hi, 4)]}
