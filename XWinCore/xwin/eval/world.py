"""`xwin eval world`: does the model predict the view after a rotation, on CTs it never saw?

For each CT: render the PA context and the targets at LAO −90…90° in 15° steps (CRAN 0) with the training geometry;
predict every target from the context; measure latent retrieval top-1 (is the predicted latent's nearest target latent,
among the 13 angles, the right one, by cosine similarity), the cosine similarity of predicted and true target latents
(a view's latent: the target encoder's layer-normed patch tokens, flattened, so the spatial layout counts), and
PSNR (pooled MSE) / SSIM of the decoded projection against the true DRR (images in [0, 1]).
Baselines: ``copy_context`` (the PA view as the prediction), ``mean_projection`` (the training bank's mean image at that
angle) and ``random_init`` (the same architecture, untrained).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import SSIMMetric

from ..data.bank import BankSpec, render_views
from ..drr import Projector
from ..models import create_model, view_latent
from ..predict import LoadedModel

TARGET_LAO = tuple(float(a) for a in range(-90, 91, 15))


def _spec(loaded: LoadedModel) -> BankSpec:
    from ..train.data import bank_spec
    return bank_spec(loaded.config)


def render_targets(volume, spec: BankSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(context (1, 1, S, S) PA view, targets (13, 1, S, S) at TARGET_LAO, CRAN 0) of one CT, [0, 1]."""
    lao_spec = BankSpec(**{**spec.__dict__, "lao": (0.0,) + TARGET_LAO, "cran": (0.0,)})
    images = torch.from_numpy(render_views(Projector(volume, spec.geometry()), lao_spec, 0.0, np.zeros(3)))
    return images[:1, None].float(), images[1:, None].float()


def image_scores(pred: torch.Tensor, true: torch.Tensor) -> tuple[float, float]:
    """PSNR (dB, data range 1) of the MSE pooled over the N images, and mean SSIM, of (N, 1, S, S) images in [0, 1].

    Pooling the MSE keeps PSNR finite when one prediction is exact (the PA target of ``copy_context``).
    """
    pred = pred.clamp(0, 1).float()
    psnr = 10.0 * torch.log10(1.0 / F.mse_loss(pred, true.float()).clamp_min(1e-12))
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=7)(pred, true).mean()
    return float(psnr), float(ssim)


def latent_scores(pred_latent: torch.Tensor, target_latent: torch.Tensor) -> tuple[float, float]:
    """(retrieval top-1 among the targets by cosine similarity, mean cosine of matching pairs) of (N, F) latents."""
    p, t = F.normalize(pred_latent.float(), dim=-1), F.normalize(target_latent.float(), dim=-1)
    sim = p @ t.T
    top1 = float((sim.argmax(dim=1) == torch.arange(len(p))).float().mean())
    return top1, float(sim.diagonal().mean())


def _model_case(model, context, targets, d_lao) -> dict:
    n = len(targets)
    tokens = model.predict_view(context.expand(n, -1, -1, -1), d_lao, torch.zeros_like(d_lao))
    top1, cos = latent_scores(view_latent(tokens), view_latent(model.target_encoder(targets)))
    psnr, ssim = image_scores(model.decode(tokens), targets)
    return {"retrieval_top1": top1, "cosine": cos, "psnr": psnr, "ssim": ssim}


def _image_case(model, images, targets) -> dict:
    """Scores of a baseline that predicts images: its latent is the target encoder's latent of its image."""
    top1, cos = latent_scores(view_latent(model.target_encoder(images)), view_latent(model.target_encoder(targets)))
    psnr, ssim = image_scores(images, targets)
    return {"retrieval_top1": top1, "cosine": cos, "psnr": psnr, "ssim": ssim}


def _mean_images(loaded: LoadedModel, lao: torch.Tensor) -> torch.Tensor | None:
    if loaded.mean_projection is None:
        return None
    poses = loaded.mean_poses.float()
    want = torch.stack([lao, torch.zeros_like(lao)], dim=1)
    idx = torch.cdist(want, poses).argmin(dim=1)
    return loaded.mean_projection[idx][:, None].float()


def _average(cases: list[dict]) -> dict:
    keys = cases[0].keys()
    return {k: (None if any(c[k] is None for c in cases) else round(float(np.mean([c[k] for c in cases])), 4))
            for k in keys}


@torch.no_grad()
def evaluate_world(loaded: LoadedModel, volumes: list, seed: int = 0) -> dict:
    """``{"model": M, "baselines": {"copy_context": M, "mean_projection": M, "random_init": M}}`` averaged over CTs."""
    model = loaded.model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    untrained = create_model(loaded.config).eval().to(device)
    spec = _spec(loaded)
    lao = torch.tensor(TARGET_LAO, device=device)
    results = {"model": [], "copy_context": [], "mean_projection": [], "random_init": []}
    for volume in volumes:
        context, targets = (t.to(device) for t in render_targets(volume, spec))
        results["model"].append(_model_case(model, context, targets, lao))
        results["random_init"].append(_model_case(untrained, context, targets, lao))
        results["copy_context"].append(_image_case(model, context.expand_as(targets), targets))
        mean = _mean_images(loaded, lao)
        results["mean_projection"].append(_image_case(model, mean, targets) if mean is not None else
                                          {"retrieval_top1": None, "cosine": None, "psnr": None, "ssim": None})
    out = {k: _average(v) for k, v in results.items()}
    return {"model": out.pop("model"), "baselines": out}
