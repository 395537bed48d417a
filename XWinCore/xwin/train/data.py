"""Training data for `xwin train`: the DRR bank (built once by rank 0) or on-the-fly rendering, and the real CXRs,
as a pair sampler."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from ..data import BankSpec, OnlineDrrSampler, PairSampler, build_bank, find_cts, find_images, load_bank, load_cxrs
from ..errors import XWinInputError
from .distributed import Dist


def with_overrides(cfg, ct_dir: str | None = None, cxr_dir: str | None = None, init: str | None = None):
    """``cfg`` with ``data.ct`` = the CTs found in ``ct_dir`` (`xwin.data.find_cts`), ``data.cxr`` = [``cxr_dir``]
    and ``train.init`` = ``init``, each only when given (`xwin train --ct-dir/--cxr-dir/--init`). Folders are checked
    now, so a wrong one fails before any work."""
    data, train = cfg.data, cfg.train
    if ct_dir:
        data = dataclasses.replace(data, ct=tuple(str(p) for p in find_cts(ct_dir)))
    if cxr_dir:
        find_images(cxr_dir)
        data = dataclasses.replace(data, cxr=(str(cxr_dir),))
    if init:
        train = dataclasses.replace(train, init=str(init))
    return dataclasses.replace(cfg, data=data, train=train)


def bank_spec(cfg) -> BankSpec:
    """The bank the config asks for (angles in degrees, lengths in mm, image size from the model)."""
    c = cfg.data
    return BankSpec(img_size=cfg.model.img_size, lao=tuple(c.lao), cran=tuple(c.cran),
                    augmentations=c.augmentations, iso_shift_mm=c.iso_shift_mm, roll_deg=c.roll_deg,
                    spacing_mm=c.spacing_mm, sid=c.sid, sdd=c.sdd, field_mm=c.field_mm, feather_mm=c.feather_mm,
                    crop_z=tuple(c.crop_z), habitus=c.habitus, seed=cfg.train.seed)


def split_cts(cases: str | Path, split: str) -> list[Path]:
    """The CT files of a cases CSV (columns ``file``, ``split``; files relative to the CSV's folder) whose split is
    ``split`` (e.g. ../shared/data/ct/cases.csv: ``train`` may train a shipped model, ``eval`` only evaluates)."""
    cases = Path(cases)
    try:
        with open(cases, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise XWinInputError(cases, f"cannot read the cases CSV: {exc.strerror or exc}") from None
    if not rows or not {"file", "split"} <= set(rows[0]):
        raise XWinInputError(cases, "a cases CSV needs the columns 'file' and 'split'")
    files = [cases.parent / r["file"] for r in rows if r["split"] == split]
    if not files:
        raise XWinInputError(cases, f"no CT has split '{split}'")
    return files


def training_cts(cfg) -> list[dict]:
    """CTs to train on: every path of ``data.ct`` and, with ``data.cases``, every CT of split ``data.split``, minus
    held-out patients (splits are by patient)."""
    held = set(cfg.data.holdout)
    listed = [Path(p) for p in cfg.data.ct]
    if cfg.data.cases:
        listed += [p for p in split_cts(cfg.data.cases, cfg.data.split) if p not in listed]
    cts = []
    for p in listed:
        if not p.exists():
            raise XWinInputError(p, "training CT not found (config key 'data.ct' or 'data.cases')")
        patient = p.name.split(".")[0]
        if patient in held or str(p) in held:
            continue
        cts.append({"path": str(p), "patient_id": patient})
    if not cts:
        raise XWinInputError(None, "config key 'data.ct': no training CT left after removing held-out patients")
    return cts


def real_cxrs(cfg) -> np.ndarray | None:
    """(N, S, S) real radiographs from the folders in ``data.cxr`` (None when the list is empty)."""
    files = [f for folder in cfg.data.cxr for f in find_images(folder)]
    return load_cxrs(files, cfg.model.img_size) if files else None


def prepare_sampler(cfg, run_dir: Path, d: Dist, state: dict | None = None) -> PairSampler | OnlineDrrSampler:
    """With ``data.online``: render pairs on this rank's device. Otherwise load (or, on rank 0, build) the bank named
    by ``data.bank`` (default RUN/bank) and wrap it in a sampler. Each rank draws with its own seed."""
    seed = cfg.train.seed + 1000 * d.rank
    c = cfg.data
    mix = dict(pa_fraction=c.pa_fraction, pairs_per_instance=c.pairs_per_instance, zoom=c.zoom,
               context_cran0_fraction=c.context_cran0_fraction, target_cran0_fraction=c.target_cran0_fraction)
    if cfg.data.online:
        sampler = OnlineDrrSampler(training_cts(cfg), bank_spec(cfg), real_cxrs(cfg), seed=seed, device=d.device,
                                   quiet=not d.main, **mix)
    else:
        bank_dir = Path(cfg.data.bank) if cfg.data.bank else run_dir / "bank"
        if d.main and not (bank_dir / "manifest.json").is_file():
            build_bank(training_cts(cfg), bank_dir, bank_spec(cfg), quiet=False)
        d.barrier()
        sampler = PairSampler(load_bank(bank_dir), real_cxrs(cfg), seed=seed, **mix)
    if state is not None:
        sampler.restore(state)
    return sampler
