"""Training data for `xwin train`: the DRR bank (built once by rank 0) or on-the-fly rendering, and the real CXRs,
as a pair sampler."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..data import (
    OnlineDrrSampler,
    PairSampler,
    bank_spec,
    build_bank,
    find_cts,
    find_images,
    load_bank,
    load_cxrs,
    training_cts,
)
from ..io.writers import check_target
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


def real_cxrs(cfg) -> np.ndarray | None:
    """(N, S, S) real radiographs from the folders in ``data.cxr`` (None when the list is empty)."""
    files = [f for folder in cfg.data.cxr for f in find_images(folder)]
    return load_cxrs(files, cfg.model.img_size) if files else None


def prepare_sampler(cfg, run_dir: Path, d: Dist, quiet: bool = False) -> PairSampler | OnlineDrrSampler:
    """With ``data.online``: render pairs on this rank's device. Otherwise load (or, on rank 0, build) the bank named
    by ``data.bank`` (default RUN/bank) and wrap it in a sampler. Each rank draws with its own seed. The real films
    are read, and the bank's folder checked, before the CTs are rendered; ``quiet``: no progress bar."""
    seed = cfg.train.seed + 1000 * d.rank
    c = cfg.data
    mix = dict(pa_fraction=c.pa_fraction, pairs_per_instance=c.pairs_per_instance, zoom=c.zoom,
               context_cran0_fraction=c.context_cran0_fraction, target_cran0_fraction=c.target_cran0_fraction,
               shared_rendering=c.shared_rendering)
    real = real_cxrs(cfg)
    sampler: PairSampler | OnlineDrrSampler
    if cfg.data.online:
        sampler = OnlineDrrSampler(training_cts(cfg), bank_spec(cfg), real, seed=seed, device=d.device,
                                   quiet=quiet or not d.main, rejitter=c.rejitter, **mix)
    else:
        bank_dir = Path(cfg.data.bank) if cfg.data.bank else run_dir / "bank"
        if d.main and not (bank_dir / "manifest.json").is_file():
            check_target(bank_dir, folder=True, make_parents=True)
            build_bank(training_cts(cfg), bank_dir, bank_spec(cfg), quiet=quiet)
        d.barrier()
        sampler = PairSampler(load_bank(bank_dir), real, seed=seed, **mix)
    return sampler
