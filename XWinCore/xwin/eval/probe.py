"""`xwin eval probe`: how much anatomy do the encoder's features carry, measured on real labelled CXRs?

A probe task is a binary label decided *within* one image source (or a set of sources), so that the source itself
cannot predict the label: across the whole shared labels CSV, "abnormal vs normal" is almost a function of the
source (every MHH film is COVID-19 positive, the normals come from other collections), and a probe on it measures
which collection a film came from, not what it shows. Built-in tasks (`TASKS`):

* ``sex``: male vs female (``sex`` column, M positive) on the MHH and NIH adult films;
* ``view``: PA vs AP projection (``view`` column, PA positive) on the MHH films only;
* ``pneumonia``: pneumonia vs normal (``finding`` column) on the Kermany paediatric films only.

Each task reports ``source_auroc``, the AUROC of a score that knows only a film's source (the share of positives in
its source, in-sample): 0.5 when the source carries no information about the label within the task.

Per task and encoder: linear probing (frozen mean-token embeddings → L2-regularised logistic regression) and k-shot
fine-tuning (encoder + linear head, k positives and k negatives per fold), both with patient-level folds (no patient
in two folds); AUROC of the pooled out-of-fold scores with a percentile bootstrap interval that resamples *patients*
(all films of a drawn patient together; a row without a patient id is its own patient). Encoders compared: the
model, a random initialisation and any extra checkpoints (e.g. an MIM-only ablation). ``transductive`` marks an
encoder that saw the probe films in training: one of them lies under a folder of its config's ``data.cxr``.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from ..data.cxr import load_cxrs
from ..errors import XWinInputError
from ..io.tables import read_csv_rows


@dataclass(frozen=True)
class ProbeTask:
    """A binary probe label decided within a set of image sources.

    A row is kept when its ``source`` column contains one of ``sources`` (case-sensitive substrings; empty: every
    row) and its ``column`` value is not empty. It is positive when ``positive`` (a regex, ``re.search``) matches
    that value, negative when ``negative`` matches (``None``: any other value); rows matching neither are dropped.
    """

    name: str
    sources: tuple[str, ...]
    column: str
    positive: str
    negative: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for option, pattern in (("--positive", self.positive), ("--negative", self.negative)):
            try:
                re.compile(pattern or "")
            except re.error as e:
                raise XWinInputError(None, f"{option} {pattern!r} is not a regular expression ({e})") from None

    def select(self, rows: Sequence[dict]) -> tuple[list[int], np.ndarray]:
        """Indices of the rows this task keeps and their boolean labels."""
        keep, labels = [], []
        for i, row in enumerate(rows):
            if self.sources and not any(s in (row.get("source") or "") for s in self.sources):
                continue
            value = (row.get(self.column) or "").strip()
            if not value:
                continue
            if re.search(self.positive, value):
                keep.append(i)
                labels.append(True)
            elif self.negative is None or re.search(self.negative, value):
                keep.append(i)
                labels.append(False)
        return keep, np.array(labels, dtype=bool)


TASKS: dict[str, ProbeTask] = {t.name: t for t in (
    ProbeTask("sex", ("MHH", "NIH"), "sex", r"^M$", r"^F$", "male vs female, MHH + NIH adult films"),
    ProbeTask("view", ("MHH",), "view", r"^PA$", r"^AP$", "PA vs AP projection, MHH films only"),
    ProbeTask("pneumonia", ("Kermany",), "finding", r"(?i)pneumonia", r"(?i)^normal$",
              "pneumonia vs normal, Kermany paediatric films only"),
)}


@dataclass
class ProbeSet:
    """The films of one task: files, labels, patient ids and sources (one entry per image)."""

    task: ProbeTask
    files: list[Path]
    labels: np.ndarray
    patients: np.ndarray
    sources: np.ndarray


MAX_RESAMPLES = 100_000  # bootstrap resamples: beyond this the interval no longer moves, the run only lasts


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties averaged)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def source_auroc(labels: np.ndarray, sources: np.ndarray) -> float:
    """AUROC of a score that knows only the source: each image scored by the share of positives in its source."""
    labels, sources = np.asarray(labels, bool), np.asarray(sources)
    share = {s: labels[sources == s].mean() for s in np.unique(sources)}
    return auroc(labels, np.array([share[s] for s in sources]))


def patient_bootstrap(patients: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Image indices of one bootstrap resample by patient: as many patients as there are, drawn with replacement,
    each bringing all of its images (a patient drawn twice brings them twice)."""
    patients = np.asarray(patients)
    unique, inverse = np.unique(patients, return_inverse=True)
    members = [np.flatnonzero(inverse == j) for j in range(len(unique))]
    drawn = rng.integers(len(unique), size=len(unique))
    return np.concatenate([members[j] for j in drawn])


def bootstrap_ci(labels, scores, patients=None, n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC, resampling patients (``None``: each image is its own patient)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    patients = np.arange(len(labels)) if patients is None else np.asarray(patients)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = patient_bootstrap(patients, rng)
        v = auroc(labels[idx], scores[idx])
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def read_rows(csv_path: str | os.PathLike, where: dict[str, str] | None = None) -> list[dict]:
    """Rows of a labels CSV (columns filename, source, patient_id and the label columns), filtered by ``where``."""
    rows = read_csv_rows(csv_path, "labels CSV")
    if rows and "filename" not in rows[0]:
        raise XWinInputError(csv_path, "labels CSV lacks the column 'filename'")
    for key in where or {}:
        if rows and key not in rows[0]:
            raise XWinInputError(csv_path, f"labels CSV lacks the column '{key}' (from --where)")
    return [r for r in rows if all(r.get(k) == v for k, v in (where or {}).items())]


def task_set(rows: Sequence[dict], task: ProbeTask, images: str | os.PathLike,
             csv_path: str | os.PathLike = "labels") -> ProbeSet:
    """The films, labels, patients and sources a task keeps; patient ids default to one per image."""
    if rows:
        for key in ("source",) * bool(task.sources) + (task.column,):
            if key not in rows[0]:
                raise XWinInputError(csv_path, f"labels CSV lacks the column '{key}' (task {task.name})")
    keep, labels = task.select(rows)
    kept = [rows[i] for i in keep]
    if labels.sum() == 0 or (~labels).sum() == 0:
        rule = (f"--column {task.column} --positive {task.positive!r}" if task.name == "custom"
                else f"{task.column} matching {task.positive!r}")
        rule += f", negative {task.negative!r}" if task.negative else ""
        raise XWinInputError(csv_path, f"task {task.name} ({rule}) needs positives and negatives: of {len(rows)} "
                                       f"rows it kept {labels.sum()} positive and {(~labels).sum()} negative")
    files = [Path(images) / r["filename"] for r in kept]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise XWinInputError(missing[0], f"image listed in {Path(csv_path).name} not found")
    patients = np.array([(r.get("patient_id") or "").strip() or f"image:{r['filename']}" for r in kept])
    sources = np.array([r.get("source") or "" for r in kept])
    return ProbeSet(task, files, labels, patients, sources)


def is_transductive(files: Sequence[str | os.PathLike], folders: Sequence[str | os.PathLike] | None,
                    cwd: str | os.PathLike | None = None) -> bool | None:
    """Whether any of ``files`` lies under one of ``folders`` (an encoder's training ``data.cxr``). Both are resolved
    to absolute paths, relative ones against ``cwd`` (default: the working directory). ``None`` folders: unknown."""
    if folders is None:
        return None
    base = Path(cwd) if cwd is not None else Path.cwd()
    roots = [(base / Path(d).expanduser()).resolve() for d in folders]
    for f in files:
        path = (base / Path(f).expanduser()).resolve()
        if any(path == r or path.is_relative_to(r) for r in roots):
            return True
    return False


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


def probe(encoders: Mapping[str, torch.nn.Module], sets: Sequence[ProbeSet], size: int, folds: int = 5,
          shots: Sequence[int] = (5,), seed: int = 0, seen: Mapping[str, Sequence[str] | None] | None = None,
          resamples: int = 1000) -> dict:
    """Per task and encoder: AUROC [95 % patient-bootstrap interval] of the linear probe and k-shot fine-tuning
    (patient-level folds), with the task's image, patient and positive counts and its source-only AUROC.

    ``seen`` maps an encoder name to the real-CXR folders it was trained on (its config's ``data.cxr``; ``()`` for
    a random initialisation, ``None`` or absent: unknown) for the ``transductive`` flag.
    """
    seen = seen or {}
    shots = tuple(k for k in shots if k > 0)
    index: dict[Path, int] = {}
    for s in sets:
        for file in s.files:
            index.setdefault(Path(file).resolve(), len(index))
    images = torch.from_numpy(load_cxrs(list(index), size))[:, None]
    rows = {s.task.name: np.array([index[Path(f).resolve()] for f in s.files]) for s in sets}
    out: dict[str, Any] = {"folds": folds, "shots": list(shots),
                           "bootstrap": {"resamples": resamples, "unit": "patient"}, "encoders": {}, "tasks": {}}
    for s in sets:
        t = s.task
        out["tasks"][t.name] = {
            "description": t.description, "sources": list(t.sources), "column": t.column, "positive": t.positive,
            "negative": t.negative, "n_images": int(len(s.labels)), "n_patients": int(len(set(s.patients))),
            "n_positive": int(s.labels.sum()), "n_positive_patients": int(len(set(s.patients[s.labels]))),
            "source_auroc": round(source_auroc(s.labels, s.sources), 4), "encoders": {}}
    plans = {}  # per task: its folds (at most one per patient) and each image's fold, checked before any encoding
    for s in sets:
        k_folds = min(folds, len(set(s.patients)))
        if k_folds < 2:
            raise XWinInputError(None, f"task {s.task.name}: needs at least 2 patients and 2 folds")
        fold = patient_folds(s.labels, s.patients, k_folds, seed)
        fewest = min(min(int(s.labels[fold != f].sum()), int((~s.labels[fold != f]).sum())) for f in range(k_folds))
        if shots and max(shots) > fewest:
            raise XWinInputError(None, f"--shots {max(shots)}: task {s.task.name} has {fewest} positive or negative "
                                       f"film(s) in its smallest training fold (at most {fewest} shots)")
        plans[s.task.name] = k_folds, fold
        out["tasks"][s.task.name]["folds"] = k_folds  # the folds used: the patients bound --folds
    all_files = [f for s in sets for f in s.files]
    for name, enc in encoders.items():
        enc = enc.eval()
        feats = embeddings(enc, images)
        folders = seen.get(name)
        out["encoders"][name] = {"transductive": is_transductive(all_files, folders),
                                 "training_cxr": None if folders is None else [str(d) for d in folders]}
        for s in sets:
            labels, patients, idx = s.labels, s.patients, rows[s.task.name]
            k_folds, fold = plans[s.task.name]
            x = feats[idx]
            result: dict[str, Any] = {"transductive": is_transductive(s.files, folders)}
            scores = np.zeros(len(labels))
            for f in range(k_folds):
                tr, te = fold != f, fold == f
                scores[te] = logistic_probe(x[tr], labels[tr], x[te])
            result["linear"] = _summary(labels, scores, patients, seed, resamples)
            rng = np.random.default_rng(seed)
            for k in shots:
                scores = np.zeros(len(labels))
                for f in range(k_folds):
                    tr, te = np.flatnonzero(fold != f), fold == f
                    pick = np.concatenate([rng.permutation(tr[labels[tr]])[:k],
                                           rng.permutation(tr[~labels[tr]])[:k]])
                    scores[te] = finetune_scores(enc, images[idx[pick]], labels[pick], images[idx[te]], seed=seed)
                result[f"{k}_shot"] = _summary(labels, scores, patients, seed, resamples)
            out["tasks"][s.task.name]["encoders"][name] = result
    return out


def _summary(labels, scores, patients, seed, resamples) -> dict:
    lo, hi = bootstrap_ci(labels, scores, patients, n=resamples, seed=seed)
    return {"auroc": round(auroc(labels, scores), 4), "ci95": [round(lo, 4), round(hi, 4)]}


def format_table(result: dict) -> str:
    """A readable table: one row per task, encoder and probe (AUROC, 95 % interval, counts, transductive)."""
    head = ("task", "encoder", "probe", "AUROC", "95% CI", "images", "patients", "positives", "transductive")
    lines = []
    for name, t in result["tasks"].items():
        for enc, r in t["encoders"].items():
            trans = {True: "yes", False: "no", None: "unknown"}[r["transductive"]]
            for key, m in r.items():
                if key == "transductive":
                    continue
                lines.append((name, enc, key.replace("_", "-"), f"{m['auroc']:.3f}",
                              f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]", str(t["n_images"]),
                              str(t["n_patients"]), str(t["n_positive"]), trans))
    widths = [max(len(h), *(len(row[i]) for row in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    text = [fmt(head), fmt(tuple("-" * w for w in widths))] + [fmt(row) for row in lines]
    text.append("")
    for name, t in result["tasks"].items():
        where = "sources containing " + " or ".join(t["sources"]) if t["sources"] else "all sources"
        neg = t["negative"] or f"not {t['positive']}"
        text.append(f"{name}: {t['description'] or name} (column {t['column']}: {t['positive']} vs {neg}; {where}); "
                    f"source-only AUROC {t['source_auroc']:.3f}")
    text.append(f"AUROC of pooled out-of-fold scores, {result['folds']} patient-level folds; 95 % interval from "
                f"{result['bootstrap']['resamples']} bootstrap resamples of patients. transductive: the encoder "
                "was trained on real films from a folder holding probe films.")
    return "\n".join(text)
