"""`xwin eval domain`: how far are real radiographs from the DRRs the model learnt from?

Real CXRs (a folder) against PA DRRs of CTs, each CT rendered ``views`` times with the training geometry and a fresh
isocenter shift (σ ``data.iso_shift_mm``, LPS mm) and detector roll (σ ``data.roll_deg``, degrees) per view:

* ``separability``: AUROC of a linear probe telling real from simulated context-encoder embeddings (mean patch token),
  from out-of-fold scores (folds keep all views of one CT together); 0.5 = the encoder cannot tell them apart.
* ``cosine``: mean cosine between real and simulated embeddings (the training metric ``domain_cosine``), beside the
  mean cosine within each domain for scale.
* ``identity``: PSNR / SSIM of the decoded Δ = 0 prediction (the PA view predicted from itself) against its input,
  for each domain, scored at 128² like `xwin eval world` (films loaded at 128², DRRs and predictions resampled): how
  faithfully the prediction path carries an image of that domain. With ``model.decoder_context`` the decoder sees the
  input itself, so identity then also measures how much of the image the refiner passes through.

DRRs go through the training resampling path (`prepared_ct`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.bank import BankSpec, bank_spec, prepared_ct, render_views
from ..data.cxr import find_images, load_cxrs
from ..drr import Projector
from ..errors import XWinInputError
from ..models import domain_cosine
from ..predict import LoadedModel
from .probe import auroc, embeddings, logistic_probe, patient_folds
from .world import SCORE_SIZE, image_scores, to_score_size


def simulated_pa_views(volume, spec: BankSpec, views: int, seed: int = 0) -> torch.Tensor:
    """(views, 1, S, S) PA DRRs in [0, 1] of one CT, each with a random isocenter shift (mm) and roll (degrees)."""
    rng = np.random.default_rng(seed)
    pa = BankSpec(**{**spec.__dict__, "lao": (0.0,), "cran": (0.0,)})
    projector = Projector(volume, spec.geometry())
    images = [render_views(projector, pa, float(rng.normal(0.0, spec.roll_deg)),
                           rng.normal(0.0, spec.iso_shift_mm, 3)) for _ in range(views)]
    return torch.from_numpy(np.concatenate(images))[:, None].float()


def _mean_offdiagonal_cosine(emb: torch.Tensor) -> float:
    e = F.normalize(emb.float(), dim=-1)
    sim = e @ e.T
    n = len(e)
    return float((sim.sum() - sim.diagonal().sum()) / max(n * (n - 1), 1))


@torch.no_grad()
def _identity(model, images: torch.Tensor, truth: torch.Tensor, batch: int = 64) -> dict:
    """Δ = 0 prediction of ``images`` (model input size) against ``truth`` (the same images at the score size)."""
    zero = torch.zeros(len(images), device=images.device)
    decoded = torch.cat([model.decode(model.predict_view(images[i:i + batch], zero[i:i + batch], zero[i:i + batch]),
                                      images[i:i + batch])
                         for i in range(0, len(images), batch)])
    psnr, ssim = image_scores(to_score_size(decoded, truth.shape[-1]), truth)
    return {"psnr": round(psnr, 3), "ssim": round(ssim, 4)}


def evaluate_domain(loaded: LoadedModel, cxr_folder, volumes: dict, views: int = 16, folds: int = 5,
                    seed: int = 0) -> dict:
    """Separability, cosine and identity scores of real CXRs in ``cxr_folder`` vs PA DRRs of ``volumes``
    (name → `Volume`). Returns ``{"n_real", "n_simulated", "folds", "separability_auroc", "cosine": {...},
    "identity": {"real": {psnr, ssim}, "simulated": {psnr, ssim}}}``. The separability folds keep each CT's DRRs
    together; with one CT, each of its jittered views is its own group (no other CT to hold out). ``folds`` is at most
    the number of groups (films + CTs): leave-one-group-out, as `xwin.eval.probe` caps its folds at the patients."""
    model = loaded.model.eval()
    device = next(model.parameters()).device
    size = loaded.config.model.img_size
    files = find_images(cxr_folder)
    if len(files) < 2 or len(volumes) * views < 2:  # a training fold would hold one domain only
        raise XWinInputError(cxr_folder if len(files) < 2 else None,
                             f"{len(files)} film(s) and {len(volumes) * views} DRR(s): telling films from DRRs "
                             "apart needs at least 2 of each")
    real = torch.from_numpy(load_cxrs(files, size))[:, None].to(device)
    real_truth = real if size == SCORE_SIZE else torch.from_numpy(load_cxrs(files, SCORE_SIZE))[:, None].to(device)
    spec = bank_spec(loaded.config)
    sims, groups = [], []
    for n, (name, volume) in enumerate(volumes.items()):
        sims.append(simulated_pa_views(prepared_ct(volume, spec), spec, views, seed + n))
        groups += [f"ct:{name}"] * views if len(volumes) > 1 else [f"ct:{name}:{v}" for v in range(views)]
    sim = torch.cat(sims).to(device)
    encoder = model.context_encoder
    emb_real, emb_sim = embeddings(encoder, real), embeddings(encoder, sim)
    x = torch.cat([emb_real, emb_sim]).float().cpu()
    y = np.r_[np.ones(len(real)), np.zeros(len(sim))]
    patients = np.array([f"cxr:{f}" for f in files] + groups)
    folds = min(folds, len(np.unique(patients)))  # --folds 1e9 looped a billion times
    fold = patient_folds(y, patients, folds, seed)
    scores = np.zeros(len(y))
    for k in range(folds):
        test = fold == k
        if test.any():
            scores[test] = logistic_probe(x[~test], y[~test], x[test])
    return {
        "n_real": len(real), "n_simulated": len(sim), "folds": folds,
        "separability_auroc": round(auroc(y, scores), 4),
        "cosine": {"real_vs_simulated": round(float(domain_cosine(emb_real, emb_sim)), 4),
                   "within_real": round(_mean_offdiagonal_cosine(emb_real), 4),
                   "within_simulated": round(_mean_offdiagonal_cosine(emb_sim), 4)},
        "identity": {"real": _identity(model, real, real_truth),
                     "simulated": _identity(model, sim, to_score_size(sim))},
    }
