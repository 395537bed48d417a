"""The X-WIN chest-radiograph world model (Yang et al., 2025): encoder, EMA target, predictors, domain head, decoder."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ModelConfig, XWinConfig
from .decoder import ProjectionDecoder
from .ema import ema_update, make_target, momentum_at
from .encoder import XWinEncoder, gather_tokens
from .losses import (
    DomainClassifier,
    affinity_matrix,
    domain_cosine,
    domain_loss,
    effective_rank,
    geometry_labels,
    grad_reverse,
    grl_coefficient,
    mim_loss,
    pose_loss,
    reconstruction_loss,
    soft_info_nce,
    variance_covariance,
    view_contrast_loss,
    view_latent,
    view_prediction_loss,
)
from .masks import MultiBlockMaskGenerator
from .predictor import MaskPredictor, ViewPredictor

LOSS_KEYS = ("view", "contrastive", "view_contrast", "encoder_view_contrast", "mim", "domain", "recon", "real_identity",
             "pose", "variance", "covariance")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _angles(x: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """Degrees as a float32 (B,) tensor on ``device``; a scalar is broadcast."""
    return torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1).expand(batch)


class XWinWorldModel(nn.Module):
    """Context encoder f_θ, EMA target encoder f_ξ, view predictor g_v, mask predictor g_m, domain classifier,
    projection decoder and (with ``loss.pose`` > 0) a linear view-pose head, with the combined training objective of
    docs/model.md.

    Images are (B, 1, H, W) radiographs in [0, 1] (H = W = ``model.img_size``); angles are in degrees.
    """

    def __init__(self, cfg: XWinConfig):
        super().__init__()
        self.cfg = cfg
        m = cfg.model
        self.context_encoder = XWinEncoder(m)
        self.target_encoder = make_target(self.context_encoder)
        self.view_predictor = ViewPredictor(m)
        self.mask_predictor = MaskPredictor(m)
        self.domain_classifier = DomainClassifier(m.embed_dim, m.domain_hidden)
        self.decoder = ProjectionDecoder(m)
        self.pose_head = nn.Linear(m.embed_dim, 2) if cfg.loss.pose > 0 else None
        self.mask_generator = MultiBlockMaskGenerator(m.grid_size, cfg.mask)

    def train(self, mode: bool = True) -> XWinWorldModel:
        """Like ``nn.Module.train``, but the EMA target always stays in eval mode."""
        super().train(mode)
        self.target_encoder.eval()
        return self

    def encode(self, images: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Patch tokens (B, N, D) from the context encoder (``target=True``: the EMA target encoder)."""
        return (self.target_encoder if target else self.context_encoder)(images)

    def embed(self, images: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Image embedding (B, D) = mean patch token. Downstream features use the context encoder (the default):
        it is the network trained by gradients, sees real CXRs through MIM, and is domain-aligned."""
        return self.encode(images, target).mean(dim=1)

    def predict_view(self, context_images: torch.Tensor, d_lao: torch.Tensor | float,
                     d_cran: torch.Tensor | float) -> torch.Tensor:
        """Predicted target-encoder tokens (B, N, D) of the view after rotating the source by (Δlao, Δcran)°."""
        b, device = context_images.shape[0], context_images.device
        tokens = self.context_encoder(context_images)
        return self.view_predictor(tokens, _angles(d_lao, b, device), _angles(d_cran, b, device))

    def decode(self, tokens: torch.Tensor, context: torch.Tensor | None = None, d_lao: torch.Tensor | float = 0.0,
               d_cran: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Tokens (B, N, D) → radiograph (B, 1, H, W) in [0, 1]. With ``model.decoder_context`` the decoder also sees
        the context radiograph (B, 1, H, W) the tokens were predicted from and the action (Δlao, Δcran)°; without a
        context it decodes from the tokens alone."""
        b, device = tokens.shape[0], tokens.device
        action = torch.stack([_angles(d_lao, b, device), _angles(d_cran, b, device)], dim=1)
        return self.decoder(tokens, context, action)

    @torch.no_grad()
    def update_target(self, step: int, total_steps: int) -> float:
        """EMA step of the target encoder with momentum m(step); returns m. Call after each optimiser step."""
        loss = self.cfg.loss
        m = momentum_at(step, total_steps, loss.ema_start, loss.ema_end, loss.ema_schedule)
        ema_update(self.target_encoder, self.context_encoder, m)
        return m

    def _mim(self, images: torch.Tensor, target_tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Masked latent modelling on ``images`` (n, 1, H, W) given their target-encoder tokens (n, N, D)."""
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + step)
        masks = self.mask_generator(images.shape[0], gen).to(images.device)
        visible = self.context_encoder(images, keep=masks.context)  # (n, Kc, D)
        num_blocks = masks.targets.shape[0]
        query = masks.targets.flatten(0, 1)  # (M·n, Kt), block-major like .repeat below
        pred = self.mask_predictor(visible.repeat(num_blocks, 1, 1), masks.context.repeat(num_blocks, 1), query)
        return mim_loss(pred, gather_tokens(target_tokens.repeat(num_blocks, 1, 1), query))

    def training_losses(self, batch: dict, step: int, total_steps: int) -> dict[str, torch.Tensor]:
        """All objectives for one batch, the weighted ``total`` and detached metrics.

        ``batch``: ``context`` and ``target`` (B, 1, H, W) DRRs of the same CT before/after the rotation
        ``d_lao``, ``d_cran`` (B,) degrees; ``group`` (B,) volume ids; ``patient`` (B,) CT ids and ``pose`` (B, 2) the
        context view's (lao, cran) degrees (needed with ``loss.pose`` > 0 or ``loss.alignment_labels: geometry``);
        optional ``real`` (R, 1, H, W) CXRs.
        Returns ``view``, ``contrastive``, ``view_contrast``, ``encoder_view_contrast``, ``mim``, ``domain`` (0 without
        ``real``), ``recon``, ``real_identity`` (0 without ``real``), ``pose``, ``variance``, ``covariance``, ``total``,
        the metric ``effective_rank`` (of the batch's target-view embeddings) and with ``real`` the metric
        ``domain_cosine``.
        Masks are drawn from a generator seeded by (train.seed, step); ``loss.view_contrast`` needs ``group``.
        A loss whose weight is 0 is not computed (reported as 0); with view, contrastive, view_contrast and recon all
        0 the view predictor and decoder are skipped (e.g. the MIM-only ablation, `configs/cpu_small_mim_only.yaml`).
        """
        lc = self.cfg.loss
        ctx, tgt, real = batch["context"], batch["target"], batch.get("real")
        b, device = ctx.shape[0], ctx.device
        d_lao, d_cran = _angles(batch["d_lao"], b, device), _angles(batch["d_cran"], b, device)
        group = batch.get("group") if lc.affinity_within_group else None
        images = ctx if real is None else torch.cat([ctx, real])  # simulated then real
        zero = torch.zeros((), device=device)
        # with none of these the world-model path is skipped (the MIM-only ablation)
        views = any(getattr(lc, k) > 0 for k in ("view", "contrastive", "view_contrast", "recon"))

        with torch.no_grad():
            target_all = self.target_encoder(torch.cat([tgt, images]) if views else images)
        # target_tokens, pred_tokens and target_pose are None only where no loss below reads them (Any for mypy)
        target_tokens: Any
        target_tokens, image_targets = (target_all[:b], target_all[b:]) if views else (None, target_all)

        # with loss.encoder_view_contrast the context encoder also sees the targets (one pass: images, then targets),
        # rendered again under another jitter where the batch has them (data.rejitter)
        encoder_views = lc.encoder_view_contrast > 0 and views
        again = batch.get("target_rejittered", tgt)
        tokens = self.context_encoder(torch.cat([images, again]) if encoder_views else images)
        # target_view_tokens is None only where encoder_views is off (Any for mypy)
        target_view_tokens: Any
        tokens, target_view_tokens = (tokens[:len(images)], tokens[len(images):]) if encoder_views else (tokens, None)
        pred_tokens: Any = self.view_predictor(tokens[:b], d_lao, d_cran) if views else None
        emb = tokens.mean(1)

        geometry = lc.contrastive > 0 and lc.alignment_labels == "geometry"
        # (B, 2) the target views' (lao, cran) degrees, for the labels that follow the geometry
        target_pose: Any = self._pose(batch, device) + torch.stack([d_lao, d_cran], dim=1) \
            if geometry or lc.view_contrast > 0 or encoder_views else None
        out: dict[str, torch.Tensor] = {}
        out["view"] = view_prediction_loss(pred_tokens, target_tokens, lc.view_loss) if lc.view > 0 else zero
        if lc.contrastive > 0:
            latent = (lambda z: z.mean(1)) if lc.contrastive_latent == "embedding" else view_latent
            pred_latent, target_latent = latent(pred_tokens), latent(target_tokens)
            if geometry:
                labels = geometry_labels(target_pose, batch["patient"].to(device), lc.label_sigma_deg)
            else:
                labels = affinity_matrix(target_latent, lc.tau_affinity, None if group is None else group.to(device))
            out["contrastive"] = soft_info_nce(pred_latent, target_latent, labels, lc.tau)
        else:
            out["contrastive"] = zero
        if lc.view_contrast > 0:  # the views of one group told apart
            if "group" not in batch:
                raise KeyError("loss.view_contrast > 0 needs the batch's 'group' (B,): the volume ids")
            out["view_contrast"] = view_contrast_loss(view_latent(pred_tokens), view_latent(target_tokens),
                                                      target_pose, batch["group"].to(device), lc.label_sigma_deg,
                                                      lc.view_contrast_tau, lc.view_contrast_centred)
        else:
            out["view_contrast"] = zero
        if encoder_views:  # the encoders' own latent tells the views of one group apart, smoothly in the angle
            if "group" not in batch:
                raise KeyError("loss.encoder_view_contrast > 0 needs the batch's 'group' (B,): the volume ids")
            out["encoder_view_contrast"] = view_contrast_loss(
                view_latent(target_view_tokens), view_latent(target_tokens), target_pose, batch["group"].to(device),
                lc.label_sigma_deg, lc.view_contrast_tau, centred=False)
        else:
            out["encoder_view_contrast"] = zero
        if lc.mim == 0 or (lc.mim_on == "real" and real is None):
            out["mim"] = zero
        else:  # on every image, or (``loss.mim_on: real``) on the real films only: MIM is what the films teach
            first = b if lc.mim_on == "real" else 0
            out["mim"] = self._mim(images[first:], image_targets[first:], step)
        if real is None or lc.domain == 0:
            out["domain"] = zero
        else:
            logits = self.domain_classifier(grad_reverse(emb, grl_coefficient(step, total_steps, lc.grl)))
            out["domain"] = domain_loss(logits[b:], logits[:b])
        if lc.recon == 0:
            out["recon"] = zero
        elif lc.recon_grad:  # pixels anchor the latent: decoding trains predictor and encoder too
            # the context refiner (model.decoder_context) learns on the predicted view only: CPU budget
            out["recon"] = (reconstruction_loss(self.decoder(target_tokens), tgt, lc.ssim_weight)
                            + reconstruction_loss(self.decode(pred_tokens, ctx, d_lao, d_cran), tgt, lc.ssim_weight)
                            + reconstruction_loss(self.decoder(tokens[:b]), ctx, lc.ssim_weight)) / 3
        else:
            out["recon"] = 0.5 * (
                reconstruction_loss(self.decode(target_tokens, ctx, d_lao, d_cran), tgt, lc.ssim_weight)
                + reconstruction_loss(self.decode(pred_tokens.detach(), ctx, d_lao, d_cran), tgt, lc.ssim_weight))
        if real is None or lc.real_identity == 0 or not views:
            out["real_identity"] = zero
        else:  # the null action on a real film: predict its own tokens and decode the film itself
            none = torch.zeros(len(real), device=device)
            pred_real = self.view_predictor(tokens[b:], none, none)
            out["real_identity"] = (view_prediction_loss(pred_real, image_targets[b:], lc.view_loss)
                                    + reconstruction_loss(self.decode(pred_real, real), real, lc.ssim_weight))
        if lc.pose == 0 or not views:
            out["pose"] = zero
        else:  # both latents know their view: the context's pose from f_θ, the target's from g_v's prediction
            pose = self._pose(batch, device)
            target_pose = pose + torch.stack([d_lao, d_cran], dim=1)
            # pose_head exists when loss.pose > 0
            out["pose"] = 0.5 * (pose_loss(self.pose_head(emb[:b]), pose)  # type: ignore[misc]
                                 + pose_loss(self.pose_head(pred_tokens.mean(1)), target_pose))  # type: ignore[misc]
        if lc.variance > 0 or lc.covariance > 0:  # collapse guard on the image embeddings (simulated and real)
            out["variance"], out["covariance"] = variance_covariance(emb)
        else:
            out["variance"] = out["covariance"] = zero
        out["total"] = sum(getattr(lc, k) * out[k] for k in LOSS_KEYS)
        out["effective_rank"] = effective_rank((target_tokens if views else image_targets).mean(1))
        if real is not None:
            out["domain_cosine"] = domain_cosine(emb[b:], emb[:b])
        return out

    @staticmethod
    def _pose(batch: dict, device: torch.device) -> torch.Tensor:
        if "pose" not in batch:
            raise KeyError("loss.pose > 0 and geometry alignment labels need the batch's 'pose' (B, 2): the context "
                           "view's (lao, cran)")
        return batch["pose"].to(device).float()

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component, and the trainable total (everything but the EMA target)."""
        parts = ("context_encoder", "target_encoder", "view_predictor", "mask_predictor", "domain_classifier",
                 "decoder")
        counts = {name: count_parameters(getattr(self, name)) for name in parts}
        counts["trainable"] = count_parameters(self, trainable_only=True)
        return counts


def create_model(cfg: ModelConfig | XWinConfig | None = None) -> XWinWorldModel:
    """Build the world model; a bare ``ModelConfig`` gets the default loss, mask and train sections."""
    if cfg is None:
        cfg = XWinConfig()
    elif isinstance(cfg, ModelConfig):
        cfg = XWinConfig(model=cfg)
    return XWinWorldModel(cfg)
