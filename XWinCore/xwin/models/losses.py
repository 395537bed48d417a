"""X-WIN objectives: view prediction, affinity-guided contrastive alignment, masked latent modelling, domain
adaptation (gradient reversal) and the projection decoder's reconstruction loss. Formulas: docs/model.md.

Every loss computes in float32 whatever the autocast dtype of its inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _no_autocast(x: torch.Tensor) -> torch.autocast:
    """Context in which matmuls and convolutions on ``x``'s device stay in float32 under AMP."""
    return torch.autocast(x.device.type, enabled=False)


def _ln(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over the feature dimension (I-JEPA target normalisation)."""
    x = x.float()
    return F.layer_norm(x, x.shape[-1:])


def view_latent(tokens: torch.Tensor) -> torch.Tensor:
    """The latent of a view: its layer-normed patch tokens (B, P, D), flattened to (B, P·D) (spatial layout kept)."""
    return _ln(tokens).flatten(1)


def affinity_matrix(target: torch.Tensor, tau_affinity: float, group: torch.Tensor | None = None) -> torch.Tensor:
    """Soft labels A (B, B): A_ij = softmax_j(cos(t_i, t_j)/τ̃), restricted to j in i's group when ``group`` is given.

    No gradient flows through A. Identical targets share their row mass equally; as τ̃ → 0 with distinct
    targets, A → I.
    """
    t = F.normalize(target.detach().float(), dim=-1)
    with _no_autocast(t):
        logits = t @ t.T / tau_affinity
    if group is not None:
        logits = logits.masked_fill(group[:, None] != group[None, :], float("-inf"))
    return logits.softmax(dim=-1)


def beam_directions(pose_deg: torch.Tensor) -> torch.Tensor:
    """Unit beam directions (B, 3) of C-arm views at (lao, cran) degrees (B, 2): (sin a cos c, cos a cos c, sin c);
    the angle between two views is the arccos of their dot product (roll and isocenter shift are ignored)."""
    a, c = torch.deg2rad(pose_deg.float()).unbind(-1)
    return torch.stack([a.sin() * c.cos(), a.cos() * c.cos(), c.sin()], dim=-1)


def geometry_labels(pose_deg: torch.Tensor, patient: torch.Tensor, sigma_deg: float) -> torch.Tensor:
    """Soft labels A (B, B) that follow the geometry: A_ij ∝ exp(−θ_ij² / 2σ²) for views i, j of the same patient
    (any deformed copy: copies are never each other's negatives at the same angle), 0 across patients; θ_ij is the
    angle (degrees) between the views' beam directions (`beam_directions`). Rows sum to 1."""
    d = beam_directions(pose_deg)
    theta = torch.rad2deg(torch.arccos((d @ d.T).clamp(-1.0, 1.0)))
    logits = -theta**2 / (2 * sigma_deg**2)
    logits = logits.masked_fill(patient[:, None] != patient[None, :], float("-inf"))
    return logits.softmax(dim=-1)


def soft_info_nce(pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, tau: float = 0.1,
                  allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between predicted and target embeddings (B, D) with soft labels ``labels`` (B, B) (rows sum
    to 1, symmetric up to row normalisation): with p, t the L2-normalised rows and S = p tᵀ/τ,
    L = ½[CE(softmax_row(S), A) + CE(softmax_row(Sᵀ), A)], CE(Q, A) = −(1/B) Σ_ij A_ij log Q_ij.
    ``allowed`` (B, B) bool, symmetric: only those pairs enter the softmaxes (the labels must be 0 elsewhere)."""
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    with _no_autocast(p):
        logits = p @ t.T / tau
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))

    def cross_entropy(s: torch.Tensor) -> torch.Tensor:
        return -torch.where(labels > 0, labels * s.log_softmax(dim=-1), 0.0).sum(-1).mean()

    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


def view_contrast_loss(pred: torch.Tensor, target: torch.Tensor, pose_deg: torch.Tensor, group: torch.Tensor,
                       sigma_deg: float, tau: float = 0.1, centred: bool = True) -> torch.Tensor:
    """Tell the views of one group apart: symmetric InfoNCE whose softmaxes run over the views of i's own group only.

    pred, target (B, D) view latents; pose_deg (B, 2) the target views' (lao, cran) degrees; group (B,) volume ids
    (with ``data.shared_rendering``: rendering ids, so the candidates differ by their angle alone, as the 13 targets
    of one `xwin eval world` unit do); geometry labels (`geometry_labels` with the group as the patient).
    ``centred``: with m_g the mean target latent of group g's views in the batch (sg), p_i = pred_i − m_g(i),
    t_i = target_i − m_g(i). Views of one anatomy share most of their latent (cosine ≈ 0.95 near PA), so on raw
    latents the logits of neighbouring views differ by a fraction of 1/τ; centring removes what they share. Uncentred,
    the raw latents are compared, as the retrieval of `xwin eval world` compares them. Groups with one view add 0."""
    same = group[:, None] == group[None, :]
    pred, target = pred.float(), target.float()
    if centred:
        weights = same.float() / same.sum(dim=1, keepdim=True)
        with _no_autocast(target):
            centre = weights @ target.detach()  # (B, D) the mean target latent of each row's group
        pred, target = pred - centre, target - centre
    labels = geometry_labels(pose_deg, group, sigma_deg)
    return soft_info_nce(pred, target, labels, tau, allowed=same)


def affinity_contrastive_loss(pred: torch.Tensor, target: torch.Tensor, tau: float = 0.1,
                              tau_affinity: float = 0.05, group: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between predicted and target embeddings (B, D) with affinity soft labels.

    With p, t the L2-normalised rows and S = p tᵀ/τ:
    L = ½[CE(softmax_row(S), A) + CE(softmax_row(Sᵀ), A)], CE(Q, A) = −(1/B) Σ_ij A_ij log Q_ij,
    A = ``affinity_matrix(target, τ̃, group)``. A is the right label for both directions because the target–target
    similarity is symmetric, so the row-renormalised Aᵀ equals A. Projections of one volume at nearby angles (similar
    targets) are graded positives; ``group`` (B,) volume ids keep the positives within a volume, so others are pure
    negatives. As τ̃ → 0 with distinct targets this is the standard symmetric InfoNCE with labels ``arange(B)``.
    """
    return soft_info_nce(pred, target, affinity_matrix(target, tau_affinity, group), tau)


def variance_covariance(z: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """VICReg's collapse guards (Bardes et al., 2022) on embeddings z (n, D): variance = mean_d max(0, 1 − √(var_d +
    ε)), covariance = Σ_{d≠e} C_de² / D with C the covariance matrix of the n rows."""
    z = z.float()
    z = z - z.mean(dim=0)
    n, dim = z.shape
    variance = F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()
    with _no_autocast(z):
        cov = z.T @ z / max(n - 1, 1)
    covariance = (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / dim
    return variance, covariance


@torch.no_grad()
def effective_rank(z: torch.Tensor) -> torch.Tensor:
    """Effective rank (Roy & Vetterli, 2007) of embeddings z (n, D): exp of the entropy of the normalised singular
    values of the centred matrix; 1 when all rows lie on one line, min(n, D) when the spectrum is flat."""
    z = z.float()
    s = torch.linalg.svdvals(z - z.mean(dim=0))
    p = s / s.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


def view_prediction_loss(pred_tokens: torch.Tensor, target_tokens: torch.Tensor,
                         kind: str = "smooth_l1") -> torch.Tensor:
    """I-JEPA regression of predicted tokens onto layer-normed target tokens (no gradient into the target)."""
    target = _ln(target_tokens.detach())
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred_tokens.float(), target)
    if kind == "mse":
        return F.mse_loss(pred_tokens.float(), target)
    raise ValueError(f"unknown view loss {kind!r}")


def mim_loss(pred: torch.Tensor, target_feats: torch.Tensor) -> torch.Tensor:
    """Masked latent modelling: MSE between predicted and layer-normed target features at the masked patches."""
    return F.mse_loss(pred.float(), _ln(target_feats.detach()))


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by −λ (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, lambd)


def grl_coefficient(step: int, total_steps: int, scale: float = 1.0) -> float:
    """DANN ramp λ(p) = scale·(2/(1 + e^(−10p)) − 1), p = step/total: 0 at the start, → scale at the end."""
    p = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return scale * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


class DomainClassifier(nn.Module):
    """Real-vs-simulated logit from an embedding (B, D) or from patch tokens (B, N, D), which are mean-pooled."""

    def __init__(self, embed_dim: int, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.mean(dim=1)
        return self.mlp(x).squeeze(-1)


def domain_loss(real_logits: torch.Tensor, sim_logits: torch.Tensor) -> torch.Tensor:
    """Balanced BCE with real = 1, simulated = 0: ½[BCE(real, 1) + BCE(sim, 0)]."""
    real = F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits, dtype=torch.float32))
    sim = F.binary_cross_entropy_with_logits(sim_logits.float(), torch.zeros_like(sim_logits, dtype=torch.float32))
    return 0.5 * (real + sim)


def pose_loss(pred: torch.Tensor, pose_deg: torch.Tensor) -> torch.Tensor:
    """View-pose regression: smooth L1 between the pose head's output (B, 2) and the view's absolute C-arm angles
    (lao, cran) in degrees, scaled by 1/90° (so ±90° LAO is ±1)."""
    return F.smooth_l1_loss(pred.float(), pose_deg.float() / 90.0)


@torch.no_grad()
def domain_cosine(real_emb: torch.Tensor, sim_emb: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over all (real, simulated) pairs: (1/RS) Σ_ij cos(r_i, s_j) (1 = aligned domains)."""
    r = F.normalize(real_emb.float(), dim=-1)
    s = F.normalize(sim_emb.float(), dim=-1)
    with _no_autocast(r):
        return (r @ s.T).mean()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0, per_image: bool = False) -> torch.Tensor:
    """Mean structural similarity (Wang et al., 2004) of images (B, C, H, W) with a Gaussian window (σ ``sigma``
    pixels, valid positions only), over the batch, or (B,) one per image with ``per_image``.

    XWin's one 2D SSIM, at two window sizes on purpose: the decoder loss (`reconstruction_loss`) uses 11 × 11, Wang et
    al.'s; `xwin.eval.world.per_image_scores` scores predictions with 7 × 7 (the window its published results were
    computed with; equal to MONAI's ``SSIMMetric(win_size=7)`` it replaced, to 1e-7). The 3D SSIM of reconstructions,
    `xwin.recon.metrics.ssim`, differs on purpose (volumes in HU clipped to a window, a mask, scipy).

    The five local statistics (means, second moments) are blurred together, with the separable Gaussian as two 1D
    convolutions (2·window instead of window² multiplies per pixel: the decoder loss runs it every training step)."""
    x, y = x.float(), y.float()
    c = x.shape[1]
    window = min(window, x.shape[-2], x.shape[-1])
    coords = torch.arange(window, dtype=torch.float32, device=x.device) - (window - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = g / g.sum()
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    with _no_autocast(stats):
        blurred = F.conv2d(stats, g.view(1, 1, window, 1).expand(5 * c, 1, window, 1), groups=5 * c)
        blurred = F.conv2d(blurred, g.view(1, 1, 1, window).expand(5 * c, 1, 1, window), groups=5 * c)
    mu_x, mu_y, xx, yy, xy = blurred.split(c, dim=1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(1) if per_image else (num / den).mean()


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.2) -> torch.Tensor:
    """Decoder loss on [0, 1] images: L1 + w·(1 − SSIM)."""
    loss = F.l1_loss(pred.float(), target.float())
    if ssim_weight > 0:
        loss = loss + ssim_weight * (1.0 - ssim(pred, target))
    return loss
