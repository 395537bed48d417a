"""Prediction with a trained world model: a real CXR (or a DRR) as the PA context → decoded projections at new poses.

Model files: a training checkpoint folder / run folder, or an exported inference file (``.safetensors`` with the config
in its metadata, fp16 weights of the encoders, view predictor and decoder, and the training bank's mean projections
as the ``mean_projection`` baseline). Nothing is unpickled. The embedded default ships with the package
(``xwin/models/weights/``, package data; the repository's ``Resources/Models`` is a link to that folder).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .config import XWinConfig
from .data.cxr import to_model_input
from .errors import XWinInputError
from .models import XWinWorldModel, create_model
from .models.model_file import load_checkpoint, read_weights, write_model_file

INFERENCE_MODULES = ("context_encoder.", "target_encoder.", "view_predictor.", "decoder.")
DEFAULT_NAME = "xwin_default.safetensors"


def default_checkpoint() -> Path:
    """$XWIN_CHECKPOINT, else the embedded model shipped in the package (``xwin/models/weights/``, read through
    `importlib.resources`, so an installed wheel finds it wherever it is installed)."""
    env = os.environ.get("XWIN_CHECKPOINT")
    if env is not None and env.strip():
        return Path(env)
    if env:  # campaign 12: blanks were taken for a file name (": model not found")
        raise XWinInputError(None, f"XWIN_CHECKPOINT is blank ({env!r}): name a model file or checkpoint folder, or "
                                   "unset it for the embedded model")
    shipped = resources.files(__package__) / "models" / "weights" / DEFAULT_NAME
    if isinstance(shipped, Path) and shipped.is_file():  # a zipped package would need extracting: not supported
        return shipped
    raise XWinInputError(None, f"no default model found: set XWIN_CHECKPOINT or pass --checkpoint "
                               f"(the package has no {DEFAULT_NAME}: looked at {shipped})")


@dataclass
class LoadedModel:
    """A world model ready for inference, its config, and the mean training projections (V, H, W) at ``poses``."""

    model: XWinWorldModel
    config: XWinConfig
    mean_projection: torch.Tensor | None = None
    mean_poses: torch.Tensor | None = None


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, bank=None,
                 mean_from: str | os.PathLike | None = None) -> Path:
    """Write the inference part of a checkpoint (fp16) plus mean projections to one safetensors file: the bank's
    mean image per pose, or (``mean_from``) those another exported model file of the same image size carries."""
    weights, _, state = load_checkpoint(checkpoint)
    tensors = {k: v.half() for k, v in weights.items() if k.startswith(INFERENCE_MODULES)}
    if bank is not None:
        tensors["mean_projection.images"] = torch.from_numpy(np.asarray(bank.images, np.float32).mean(0)).half()
        tensors["mean_projection.poses"] = torch.from_numpy(np.asarray(bank.poses[0], np.float32))
    if mean_from is not None:
        source = {k: v for k, v in read_weights(mean_from)[0].items() if k.startswith("mean_projection.")}
        size = state["config"]["model"]["img_size"]
        if len(source) != 2 or source["mean_projection.images"].shape[1:] != (size, size):
            raise XWinInputError(mean_from, f"--mean-from: the file carries no mean projection of {size} × {size} px")
        tensors.update({k: v.half() if k.endswith("images") else v for k, v in source.items()})
    return write_model_file(out, tensors, state["config"], state["step"])


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load an exported model file or a checkpoint/run folder (default: `default_checkpoint`)."""
    path = Path(path) if path is not None else default_checkpoint()
    tensors, config = read_weights(path)
    mean, poses = tensors.pop("mean_projection.images", None), tensors.pop("mean_projection.poses", None)
    size = config.model.img_size
    if mean is not None and (poses is None or mean.ndim != 3 or tuple(mean.shape[1:]) != (size, size)
                             or tuple(poses.shape) != (mean.shape[0], 2)):
        raise XWinInputError(path, f"mean_projection does not fit the model: images {tuple(mean.shape)} and poses "
                                   f"{None if poses is None else tuple(poses.shape)}, expected (V, {size}, {size}) "
                                   "and (V, 2)")
    model = create_model(config)
    own = model.state_dict()
    for name, value in tensors.items():
        if name not in own:
            raise XWinInputError(path, f"weight {name[:100]} has no place in this model (config and weights disagree)")
        if value.shape != own[name].shape:
            raise XWinInputError(path, f"weight {name[:100]} is {tuple(value.shape)}, the config's model needs "
                                       f"{tuple(own[name].shape)}")
    weights = {k: v.float() for k, v in tensors.items()}
    missing = [k for k in model.load_state_dict(weights, strict=False).missing_keys if k.startswith(INFERENCE_MODULES)]
    if missing:
        raise XWinInputError(path, f"model file lacks {len(missing)} weights, e.g. {missing[0]}")
    model.eval().to(device)
    return LoadedModel(model, config, None if mean is None else mean.float().to(device),
                       None if poses is None else poses.to(device))


class Predictor:
    """Predicted projections from one radiograph taken as the canonical PA view (LAO = CRAN = 0)."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.size = loaded.config.model.img_size
        self.device = next(self.model.parameters()).device

    def context(self, image01: np.ndarray, simulated: bool = False) -> torch.Tensor:
        """(1, 1, S, S) model input from a [0, 1] radiograph (H, W): a film is contrast-stretched, a DRR
        (``simulated``) keeps its display map, as in training."""
        image = to_model_input(np.asarray(image01, np.float32), self.size, stretch=not simulated)
        return torch.from_numpy(image)[None, None].to(self.device)

    @torch.no_grad()
    def predict(self, image01: np.ndarray, lao, cran, simulated: bool = False) -> np.ndarray:
        """(B, S, S) decoded projections in [0, 1] at the paired target angles (degrees) relative to the PA input.

        simulated: the input is a DRR in the radiograph display map (from `xwin render` or the projector), not a film.
        """
        lao = torch.as_tensor(np.atleast_1d(np.asarray(lao, np.float32)), device=self.device)
        cran = torch.as_tensor(np.atleast_1d(np.asarray(cran, np.float32)), device=self.device)
        ctx = self.context(image01, simulated).expand(lao.shape[0], -1, -1, -1)
        tokens = self.model.predict_view(ctx, lao, cran)
        return self.model.decode(tokens, ctx, lao, cran)[:, 0].float().cpu().numpy()


def load_predictor(checkpoint: str | os.PathLike | None = None, device: str = "cpu") -> Predictor:
    """A `Predictor` over `load_model` (default: the embedded model)."""
    return Predictor(load_model(checkpoint, device))
