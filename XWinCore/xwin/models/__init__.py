"""X-WIN world model: encoder, EMA target, predictors, masks, losses, decoder (docs/model.md); its config schema is
`xwin.config`."""
from .decoder import ProjectionDecoder
from .ema import ema_update, make_target, momentum_at
from .encoder import XWinEncoder, gather_tokens
from .losses import (
    DomainClassifier,
    GradientReversal,
    affinity_contrastive_loss,
    affinity_matrix,
    domain_cosine,
    domain_loss,
    grad_reverse,
    grl_coefficient,
    mim_loss,
    reconstruction_loss,
    ssim,
    view_latent,
    view_prediction_loss,
)
from .masks import MaskBatch, MultiBlockMaskGenerator
from .predictor import ActionEmbedding, MaskPredictor, TokenPredictor, ViewPredictor, sincos_2d
from .world_model import XWinWorldModel, count_parameters, create_model

__all__ = [
    "ActionEmbedding", "DomainClassifier", "GradientReversal", "MaskBatch", "MaskPredictor",
    "MultiBlockMaskGenerator", "ProjectionDecoder", "TokenPredictor", "ViewPredictor", "XWinEncoder",
    "XWinWorldModel", "affinity_contrastive_loss", "affinity_matrix", "count_parameters", "create_model",
    "domain_cosine", "domain_loss", "ema_update", "gather_tokens", "grad_reverse", "grl_coefficient", "make_target",
    "mim_loss",
    "momentum_at", "reconstruction_loss", "sincos_2d", "ssim", "view_latent", "view_prediction_loss",
]
