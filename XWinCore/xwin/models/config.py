"""Typed, validated configuration of the X-WIN world model (docs/model.md, "Config schema").

Every section is a dataclass whose fields carry their allowed range; construction validates types and ranges and
raises :class:`xwin.errors.XWinInputError` naming the dotted key, e.g. ``config key 'loss.tau': must be > 0, got -1``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

import yaml

from ..errors import XWinInputError

# timm vit_{size}_patch16_224: (embed_dim, depth, num_heads)
ENCODER_PRESETS = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


def _f(default: Any, *, gt=None, ge=None, lt=None, le=None, choices=None):
    """A dataclass field with its allowed range (checked by ``_Section.__post_init__``)."""
    meta = {k: v for k, v in dict(gt=gt, ge=ge, lt=lt, le=le, choices=choices).items() if v is not None}
    return field(default=default, metadata=meta)


def _fail(key: str, problem: str) -> XWinInputError:
    return XWinInputError(None, f"config key '{key}': {problem}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats, lists for tuples."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        (tp,) = args
        origin = get_origin(tp)
    if origin is tuple and get_args(tp)[-1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise _fail(key, f"expected a list, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, get_args(tp)[0]) for i, v in enumerate(value))
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _fail(key, f"expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise _fail(key, f"expected {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise _fail(key, f"must be finite, got {value}")
    return value


def _check_range(key: str, value: Any, meta: dict) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None:
            continue
        if "choices" in meta and v not in meta["choices"]:
            raise _fail(key, f"must be one of {', '.join(map(str, meta['choices']))}, got {v!r}")
        for op, test, sym in (("gt", lambda a, b: a > b, ">"), ("ge", lambda a, b: a >= b, ">="),
                              ("lt", lambda a, b: a < b, "<"), ("le", lambda a, b: a <= b, "<=")):
            if op in meta and not test(v, meta[op]):
                raise _fail(key, f"must be {sym} {meta[op]:g}, got {v:g}")
    if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
        raise _fail(key, f"must be an ordered [low, high] pair, got [{value[0]:g}, {value[1]:g}]")


class _Section:
    """Validates every field of a config section on construction; subclasses add cross-field checks."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            key = f"{self.section}.{f.name}"
            value = _coerce(key, getattr(self, f.name), hints[f.name])
            _check_range(key, value, f.metadata)
            setattr(self, f.name, value)
        self._check()

    def _check(self) -> None:
        pass

    def _require(self, cond: bool, name: str, problem: str) -> None:
        if not cond:
            raise _fail(f"{self.section}.{name}", problem)


@dataclass
class ModelConfig(_Section):
    """Encoder, predictors, decoder and domain classifier sizes.

    ``encoder`` picks the timm ``vit_{size}_patch16_*`` dimensions; ``embed_dim``, ``depth`` and ``num_heads``
    override them one by one (left ``null`` they are filled in from the preset).
    """

    section: ClassVar[str] = "model"
    encoder: str = _f("tiny", choices=tuple(ENCODER_PRESETS))
    embed_dim: int | None = _f(None, ge=8)
    depth: int | None = _f(None, ge=1)
    num_heads: int | None = _f(None, ge=1)
    img_size: int = _f(96, ge=16)
    patch_size: int = _f(16, ge=2)
    in_chans: int = _f(1, ge=1)
    drop_path: float = _f(0.0, ge=0.0, lt=1.0)
    predictor_depth: int = _f(3, ge=1)
    predictor_width: int = _f(384, ge=8)
    predictor_heads: int = _f(6, ge=1)
    action_frequencies: int = _f(4, ge=1)
    mask_predictor_depth: int = _f(3, ge=1)
    mask_predictor_width: int = _f(384, ge=8)
    mask_predictor_heads: int = _f(6, ge=1)
    decoder_depth: int = _f(2, ge=0)
    decoder_width: int = _f(256, ge=8)
    decoder_heads: int = _f(4, ge=1)
    decoder_refine: int = _f(0, ge=0)
    decoder_context: int = _f(0, ge=0)
    domain_hidden: int = _f(256, ge=1)

    def _check(self) -> None:
        preset = dict(zip(("embed_dim", "depth", "num_heads"), ENCODER_PRESETS[self.encoder]))
        for name, value in preset.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self._require(self.img_size % self.patch_size == 0, "img_size",
                      f"must be a multiple of model.patch_size ({self.patch_size}), got {self.img_size}")
        for width, heads in (("embed_dim", "num_heads"), ("predictor_width", "predictor_heads"),
                             ("mask_predictor_width", "mask_predictor_heads"), ("decoder_width", "decoder_heads")):
            w, h = getattr(self, width), getattr(self, heads)
            self._require(w % h == 0, width, f"must be divisible by model.{heads} ({h}), got {w}")
        for width in ("predictor_width", "mask_predictor_width", "decoder_width"):
            w = getattr(self, width)
            self._require(w % 4 == 0, width, f"must be a multiple of 4 (2D sin-cos positions), got {w}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        n = self.img_size // self.patch_size
        return n, n

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]


@dataclass
class LossConfig(_Section):
    """Loss weights λ, temperatures and the EMA momentum schedule."""

    section: ClassVar[str] = "loss"
    view: float = _f(1.0, ge=0.0)
    contrastive: float = _f(0.5, ge=0.0)
    mim: float = _f(1.0, ge=0.0)
    domain: float = _f(0.1, ge=0.0)
    recon: float = _f(1.0, ge=0.0)
    recon_grad: bool = _f(True)
    real_identity: float = _f(0.0, ge=0.0)
    mim_on: str = _f("all", choices=("all", "real"))
    pose: float = _f(0.0, ge=0.0)
    view_loss: str = _f("smooth_l1", choices=("smooth_l1", "mse"))
    tau: float = _f(0.1, gt=0.0)
    tau_affinity: float = _f(0.05, gt=0.0)
    affinity_within_group: bool = _f(True)
    alignment_labels: str = _f("affinity", choices=("affinity", "geometry"))
    label_sigma_deg: float = _f(7.5, gt=0.0)
    variance: float = _f(0.0, ge=0.0)
    covariance: float = _f(0.0, ge=0.0)
    contrastive_latent: str = _f("embedding", choices=("embedding", "tokens"))
    grl: float = _f(1.0, ge=0.0)
    ssim_weight: float = _f(0.2, ge=0.0)
    ema_start: float = _f(0.996, ge=0.0, le=1.0)
    ema_end: float = _f(1.0, ge=0.0, le=1.0)
    ema_schedule: str = _f("cosine", choices=("cosine", "linear"))

    def _check(self) -> None:
        self._require(self.ema_start <= self.ema_end, "ema_end",
                      f"must be >= loss.ema_start ({self.ema_start}), got {self.ema_end}")


@dataclass
class MaskConfig(_Section):
    """I-JEPA multi-block masking for masked latent modelling (scales are fractions of the patch grid)."""

    section: ClassVar[str] = "mask"
    num_targets: int = _f(4, ge=1)
    target_scale: tuple[float, float] = _f((0.15, 0.2), gt=0.0, le=1.0)
    target_aspect: tuple[float, float] = _f((0.75, 1.5), gt=0.0)
    context_scale: tuple[float, float] = _f((0.85, 1.0), gt=0.0, le=1.0)
    min_keep: int = _f(4, ge=1)


@dataclass
class DataConfig(_Section):
    """Training data: CTs rendered into the DRR bank, or on the fly on the training device when ``online`` (angles in
    degrees, lengths in mm), real CXR folders and the patient split. Relative paths are relative to the working
    directory of `xwin train`."""

    section: ClassVar[str] = "data"
    ct: tuple[str, ...] = _f(())
    cases: str | None = _f(None)
    split: str = _f("train")
    holdout: tuple[str, ...] = _f(())
    cxr: tuple[str, ...] = _f(())
    bank: str | None = _f(None)
    online: bool = _f(False)
    lao: tuple[float, ...] = _f(tuple(float(a) for a in range(-90, 91, 15)), ge=-180.0, le=180.0)
    cran: tuple[float, ...] = _f((-20.0, -10.0, 0.0, 10.0, 20.0), ge=-90.0, le=90.0)
    augmentations: int = _f(4, ge=0)
    iso_shift_mm: float = _f(10.0, ge=0.0)
    roll_deg: float = _f(3.0, ge=0.0)
    spacing_mm: float = _f(2.0, gt=0.0)
    sid: float = _f(1600.0, gt=0.0)
    sdd: float = _f(1800.0, gt=0.0)
    field_mm: float = _f(435.2, gt=0.0)
    pa_fraction: float = _f(0.5, ge=0.0, le=1.0)
    context_cran0_fraction: float = _f(0.0, ge=0.0, le=1.0)
    target_cran0_fraction: float = _f(0.0, ge=0.0, le=1.0)
    feather_mm: float = _f(0.0, ge=0.0)
    crop_z: tuple[float, float] = _f((1.0, 1.0), gt=0.0, le=1.0)
    habitus: float = _f(0.08, ge=0.0, lt=1.0)
    pairs_per_instance: int = _f(1, ge=1)
    zoom: tuple[float, float] = _f((1.0, 1.0), ge=1.0)
    real_per_batch: int = _f(0, ge=0)

    def _check(self) -> None:
        self._require(self.sdd > self.sid, "sdd", f"must exceed data.sid ({self.sid} mm), got {self.sdd}")
        self._require(0.0 in self.lao and 0.0 in self.cran, "lao",
                      "the angle grid must contain the PA view (0 in data.lao and in data.cran)")


@dataclass
class TrainConfig(_Section):
    """Optimisation: AdamW with linear warm-up then cosine decay (steps are optimiser steps); gradients are clipped
    to global norm ``grad_clip``."""

    section: ClassVar[str] = "train"
    lr: float = _f(3e-4, gt=0.0)
    weight_decay: float = _f(0.05, ge=0.0)
    warmup_steps: int = _f(200, ge=0)
    total_steps: int = _f(2000, ge=1)
    batch_size: int = _f(16, ge=1)
    grad_accum: int = _f(1, ge=1)
    grad_clip: float = _f(1.0, gt=0.0)
    amp: bool = _f(True)
    seed: int = _f(0, ge=0)
    checkpoint_every: int = _f(500, ge=1)
    init: str | None = _f(None)

    def _check(self) -> None:
        self._require(self.warmup_steps <= self.total_steps, "warmup_steps",
                      f"must be <= train.total_steps ({self.total_steps}), got {self.warmup_steps}")


_SECTIONS = {"model": ModelConfig, "loss": LossConfig, "mask": MaskConfig, "data": DataConfig, "train": TrainConfig}


@dataclass
class XWinConfig:
    """The whole experiment: one section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, data: dict | None) -> XWinConfig:
        """Build from nested mappings (e.g. parsed YAML); missing keys take their defaults."""
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise XWinInputError(None, f"config: expected a mapping of sections, got {type(data).__name__}")
        sections = {}
        for name, value in data.items():
            if name not in _SECTIONS:
                raise _fail(str(name), f"unknown section (expected one of: {', '.join(_SECTIONS)})")
            value = {} if value is None else value
            if not isinstance(value, dict):
                raise _fail(name, f"expected a mapping, got {type(value).__name__} {value!r}")
            section_cls = _SECTIONS[name]
            known = [f.name for f in dataclasses.fields(section_cls)]
            for key in value:
                if key not in known:
                    raise _fail(f"{name}.{key}", f"unknown key (expected one of: {', '.join(known)})")
            sections[name] = section_cls(**value)
        return cls(**sections)

    def to_dict(self) -> dict:
        """Plain nested dict (lists for pairs): safe for JSON, YAML and checkpoints; ``from_dict`` inverts it."""

        def plain(v):
            return list(v) if isinstance(v, tuple) else v

        return {name: {k: plain(v) for k, v in dataclasses.asdict(getattr(self, name)).items()}
                for name in _SECTIONS}


def _read_yaml(path: str | os.PathLike, chain: tuple[str, ...] = ()) -> dict:
    """The YAML mapping of ``path``; a top-level ``base: FILE`` (relative to ``path``) is read first and the file's
    sections override it key by key."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise XWinInputError(path, f"cannot read config: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise XWinInputError(path, f"not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str):
        raise XWinInputError(path, f"config key 'base': must be a file name, got {base!r}")
    base_path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), base))
    if base_path in chain:
        raise XWinInputError(path, f"config key 'base': {base} includes itself")
    if not os.path.isfile(base_path):
        raise XWinInputError(path, f"config key 'base': no such file {base_path}")
    merged = _read_yaml(base_path, chain + (os.path.abspath(path),))
    if not isinstance(merged, dict):
        raise XWinInputError(base_path, "a config must be a mapping of sections")
    for name, section in data.items():
        if isinstance(section, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **section}
        else:
            merged[name] = section
    return merged


def load_config(path: str | os.PathLike) -> XWinConfig:
    """Read and validate a YAML config (optionally ``base: FILE`` plus overrides); any problem raises
    ``XWinInputError(path, ...)``."""
    data = _read_yaml(path)
    try:
        return XWinConfig.from_dict(data)
    except XWinInputError as exc:
        raise XWinInputError(path, exc.problem) from None


def config_path(name: str) -> str:
    """Path of a config shipped with xwin (``"cpu_small"`` or ``"full_224"``)."""
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", f"{name}.yaml")
