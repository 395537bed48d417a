"""X-WIN world model: config schema, encoder, EMA target, predictors, masks, losses, decoder (docs/model.md)."""
from .config import DataConfig, LossConfig, MaskConfig, ModelConfig, TrainConfig, XWinConfig, config_path, load_config
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
    "ActionEmbedding", "DataConfig", "DomainClassifier", "GradientReversal", "LossConfig", "MaskBatch",
    "MaskConfig", "MaskPredictor", "ModelConfig", "MultiBlockMaskGenerator", "ProjectionDecoder", "TokenPredictor",
    "TrainConfig", "ViewPredictor", "XWinConfig", "XWinEncoder", "XWinWorldModel", "affinity_contrastive_loss",
    "affinity_matrix", "config_path", "count_parameters", "create_model", "domain_cosine", "domain_loss",
    "ema_update", "gather_tokens", "grad_reverse", "grl_coefficient", "load_config", "make_target", "mim_loss",
    "momentum_at", "reconstruction_loss", "sincos_2d", "ssim", "view_latent", "view_prediction_loss",
]
