"""Typed, validated configuration of the X-WIN world model (docs/model.md, "Config schema").

Every section is a dataclass whose fields carry their allowed range; construction validates types and ranges and
raises :class:`xwin.errors.XWinInputError` naming the dotted key, e.g. ``config key 'loss.tau': must be > 0, got -1``.
A YAML file is bounded before it is built (size, UTF-8, nodes after alias expansion), messages quote values cut
short, and a model whose weights and one image would not fit the memory budget (``XWIN_MAX_VOLUME_GB``) is refused.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import reprlib
import sys
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from .defaults import SDD_MM, SID_MM
from .errors import XWinInputError

# timm vit_{size}_patch16_224: (embed_dim, depth, num_heads)
ENCODER_PRESETS = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}

# world-model modules `train.freeze` may hold fixed (e.g. a stage that trains the predictors on frozen encoders)
FREEZABLE = ("context_encoder", "target_encoder", "view_predictor", "mask_predictor", "domain_classifier", "decoder")


def _f(default: Any, *, gt=None, ge=None, lt=None, le=None, choices=None):
    """A dataclass field with its allowed range (checked by ``_Section.__post_init__``)."""
    meta = {k: v for k, v in dict(gt=gt, ge=ge, lt=lt, le=le, choices=choices).items() if v is not None}
    return field(default=default, metadata=meta)


MAX_CONFIG_BYTES = 8 << 20  # a YAML config larger than this is refused unread
MAX_CONFIG_NODES = 1_000_000  # YAML nodes after alias expansion ("billion laughs" documents are refused unbuilt)
MAX_TEXT = 4096  # characters of a string value (PATH_MAX)
_INT_LIMIT = 2**63
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlong = 30


def _quote(value: Any) -> str:
    """A short repr of a config value for error messages (long texts, lists and numbers are cut)."""
    return _repr.repr(value)


def _number(value: Any) -> str:
    """A number as written in the docs (``0``, ``-1``, ``0.15``); anything else as `_quote` shows it."""
    return f"{value:g}" if isinstance(value, float) else _quote(value)


def _clip(name: Any, width: int = 60) -> str:
    text = str(name) if isinstance(name, (str, int, float, bool)) else _quote(name)
    return text if len(text) <= width else text[:width - 3] + "..."


def _fail(key: str, problem: str) -> XWinInputError:
    return XWinInputError(None, f"config key '{key}': {problem}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats, lists for tuples."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args: Sequence[Any] = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        (tp,) = args
        origin = get_origin(tp)
    if origin is tuple and get_args(tp)[-1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise _fail(key, f"expected a list, got {_quote(value)}")
        return tuple(_coerce(f"{key}[{i}]", v, get_args(tp)[0]) for i, v in enumerate(value))
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _fail(key, f"expected a list of {len(args)} numbers, got {_quote(value)}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise _fail(key, f"expected {tp.__name__}, got {type(value).__name__} {_quote(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT_LIMIT < value < _INT_LIMIT:
        raise _fail(key, f"{_quote(value)} is out of range (at most 2^63)")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise _fail(key, f"must be finite, got {value}")
    if tp is str and not value.strip():  # YAML's "" or " ": read as a path, it would be the working directory
        raise _fail(key, f"an empty text {_quote(value)} (give a value, or leave the key out)")
    if tp is str and len(value) > MAX_TEXT:
        raise _fail(key, f"a text of {len(value)} characters (at most {MAX_TEXT}): {_quote(value)}")
    return value


def _check_range(key: str, value: Any, meta: Mapping[str, Any], pair: bool) -> None:
    """Check ``meta``'s range on a value (each element of a list); a ``pair`` is a [low, high] range."""
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None:
            continue
        if "choices" in meta and v not in meta["choices"]:
            raise _fail(key, f"must be one of {', '.join(map(str, meta['choices']))}, got {_quote(v)}")
        for op, test, sym in (("gt", lambda a, b: a > b, ">"), ("ge", lambda a, b: a >= b, ">="),
                              ("lt", lambda a, b: a < b, "<"), ("le", lambda a, b: a <= b, "<=")):
            if op in meta and not test(v, meta[op]):
                raise _fail(key, f"must be {sym} {_number(meta[op])}, got {_number(v)}")
    if pair and value[0] > value[1]:
        raise _fail(key, f"must be an ordered [low, high] pair, got [{_number(value[0])}, {_number(value[1])}]")


class _Section:
    """Validates every field of a config section on construction; subclasses add cross-field checks."""

    section: ClassVar[str] = ""
    if TYPE_CHECKING:  # every section is a dataclass
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            key = f"{self.section}.{f.name}"
            value = _coerce(key, getattr(self, f.name), hints[f.name])
            pair = get_origin(hints[f.name]) is tuple and get_args(hints[f.name]) == (float, float)
            _check_range(key, value, f.metadata, pair)
            setattr(self, f.name, value)
        self._check()

    def _check(self) -> None:
        pass

    def _require(self, cond: bool, name: str, problem: str) -> None:
        if not cond:
            raise _fail(f"{self.section}.{name}", problem)


if TYPE_CHECKING:  # `ModelConfig._check` fills a None from the encoder preset: an int once the config is built
    _Preset = int
else:  # the type the values are validated against: null allowed
    _Preset = int | None


@dataclass
class ModelConfig(_Section):
    """Encoder, predictors, decoder and domain classifier sizes.

    ``encoder`` picks the timm ``vit_{size}_patch16_*`` dimensions; ``embed_dim``, ``depth`` and ``num_heads``
    override them one by one (left ``null`` they are filled in from the preset).
    """

    section: ClassVar[str] = "model"
    encoder: str = _f("tiny", choices=tuple(ENCODER_PRESETS))
    embed_dim: _Preset = _f(None, ge=8)
    depth: _Preset = _f(None, ge=1)
    num_heads: _Preset = _f(None, ge=1)
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
        self.check_memory()

    def memory_bytes(self, batch: int = 1) -> int:
        """Rough float32 bytes of the weights plus an inference pass over ``batch`` images (the largest block's
        attention and activations): the estimate checked against the memory budget before anything is allocated."""
        n, pixels = self.num_patches, self.patch_size**2 * self.in_chans
        blocks = [(self.depth, self.embed_dim, self.num_heads)] * 2 + [
            (self.predictor_depth, self.predictor_width, self.predictor_heads),
            (self.mask_predictor_depth, self.mask_predictor_width, self.mask_predictor_heads),
            (self.decoder_depth, self.decoder_width, self.decoder_heads)]
        weights = (sum(k * 12 * w * w + n * w for k, w, _ in blocks) + 2 * pixels * self.embed_dim
                   + (self.embed_dim + pixels) * self.decoder_width + self.embed_dim * self.domain_hidden
                   + 4 * self.action_frequencies * self.predictor_width
                   + 100 * (self.decoder_refine + self.decoder_context) ** 2)
        per_image = (max(n * n * h + 10 * n * w for k, w, h in blocks if k)
                     + self.img_size**2 * (8 + self.decoder_refine + 4 * self.decoder_context))
        return 4 * (weights + batch * per_image)

    def check_memory(self, batch: int = 1, request: str | None = None) -> None:
        """Refuse this model, or a ``request`` of ``batch`` images through it, beyond the memory budget."""
        from .io.validate import MEMORY_ENV, memory_budget

        need, budget = self.memory_bytes(batch), memory_budget()
        if need > budget:
            widest = max(("embed_dim", "predictor_width", "mask_predictor_width", "decoder_width"),
                         key=lambda name: getattr(self, name))
            deepest = max(("depth", "predictor_depth", "mask_predictor_depth", "decoder_depth"),
                          key=lambda name: getattr(self, name))
            sizes = ", ".join(f"{name} {getattr(self, name)}" for name in ("img_size", "patch_size", widest, deepest))
            problem = (f"needs about {need / 2**30:.3g} GiB of memory, more than the {budget / 2**30:g} GiB allowed "
                       f"(set {MEMORY_ENV} to raise the limit)")
            if request is None:
                raise _fail("model", f"{sizes}: one image {problem}")
            raise XWinInputError(None, f"{request} through this model ({sizes}) {problem}")

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
    view_contrast: float = _f(0.0, ge=0.0)
    view_contrast_tau: float = _f(0.1, gt=0.0)
    view_contrast_centred: bool = _f(True)  # compare latents minus their group's mean target (else raw latents)
    encoder_view_contrast: float = _f(0.0, ge=0.0)  # context encoder on the targets vs their target latents, per group
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


def block_size(grid: tuple[int, int], scale: float, aspect: float) -> tuple[int, int]:
    """(rows, columns) of a mask block covering ``scale`` of a (rows, columns) patch grid at ``aspect`` = rows /
    columns: at least one patch, at most the grid (`xwin.models.masks.MaskGenerator` draws scale and aspect)."""
    keep = scale * grid[0] * grid[1]
    return (min(max(round(math.sqrt(keep * aspect)), 1), grid[0]),
            min(max(round(math.sqrt(keep / aspect)), 1), grid[1]))


@dataclass
class MaskConfig(_Section):
    """I-JEPA multi-block masking for masked latent modelling (scales are fractions of the patch grid)."""

    section: ClassVar[str] = "mask"
    num_targets: int = _f(4, ge=1)
    target_scale: tuple[float, float] = _f((0.15, 0.2), gt=0.0, le=1.0)
    target_aspect: tuple[float, float] = _f((0.75, 1.5), gt=0.0)
    context_scale: tuple[float, float] = _f((0.85, 1.0), gt=0.0, le=1.0)
    min_keep: int = _f(4, ge=1)

    def check_grid(self, grid: tuple[int, int]) -> None:
        """Refuse target blocks that can cover the whole (rows, columns) patch grid alone: no context would be left
        (the largest block: scale at its maximum, aspect over its range), or a ``min_keep`` the grid cannot hold."""
        if self.min_keep > grid[0] * grid[1]:  # every draw would fall back to an unmasked context
            raise _fail("mask.min_keep", f"{self.min_keep} context patches to keep, but the {grid[0]}×{grid[1]} patch "
                                         "grid (model.img_size / model.patch_size) holds only "
                                         f"{grid[0] * grid[1]}; lower it")
        lo, hi = self.target_aspect
        largest = max((block_size(grid, self.target_scale[1], lo + (hi - lo) * i / 64) for i in range(65)),
                      key=lambda hw: hw[0] * hw[1])
        if largest[0] * largest[1] >= grid[0] * grid[1]:
            raise _fail("mask.target_scale", f"a target block of up to {largest[0]}×{largest[1]} patches covers the "
                                             f"whole {grid[0]}×{grid[1]} patch grid (model.img_size / "
                                             "model.patch_size): no context patch would be left; lower it")


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
    augmentations: int = _f(4, ge=0)  # deformed copies per CT on top of the undeformed one
    iso_shift_mm: float = _f(10.0, ge=0.0)  # std of the random isocenter shift per instance
    roll_deg: float = _f(3.0, ge=0.0)  # std of the random detector roll per instance
    spacing_mm: float = _f(2.0, gt=0.0, le=20.0)  # the CTs resampled to this (mm): coarser leaves no chest
    sid: float = _f(SID_MM, gt=0.0)
    sdd: float = _f(SDD_MM, gt=0.0)
    field_mm: float = _f(435.2, ge=1.0, le=2000.0)  # detector side (256 × 1.7 mm by default; a chest film: 430)
    pa_fraction: float = _f(0.5, ge=0.0, le=1.0)
    context_cran0_fraction: float = _f(0.0, ge=0.0, le=1.0)
    target_cran0_fraction: float = _f(0.0, ge=0.0, le=1.0)
    feather_mm: float = _f(0.0, ge=0.0)  # every CT fades to air over this width at its faces (no scan box in DRRs)
    crop_z: tuple[float, float] = _f((1.0, 1.0), gt=0.0, le=1.0)  # deformed copies keep this fraction of slices
    habitus: float = _f(0.08, ge=0.0, lt=1.0)  # deformed copies: independent scale factor per axis in 1 ± habitus
    arms: float = _f(0.0, ge=0.0, le=1.0)  # deformed copies: probability of synthetic arms down beside the chest
    pairs_per_instance: int = _f(1, ge=1)
    shared_rendering: bool = _f(False)  # the pairs of one instance draw share shift, roll and zoom: one group
    rejitter: bool = _f(False)  # online only: each target rendered again under an independent jitter
    zoom: tuple[float, float] = _f((1.0, 1.0), ge=1.0)
    real_per_batch: int = _f(0, ge=0)

    def _check(self) -> None:
        self._require(self.sdd > self.sid, "sdd", f"must exceed data.sid ({self.sid} mm), got {self.sdd}")
        self._require(0.0 in self.lao and 0.0 in self.cran, "lao",
                      "the angle grid must contain the PA view (0 in data.lao and in data.cran)")
        self._require(self.online or not self.rejitter, "rejitter",
                      "renders views on the fly: it needs data.online: true")
        for name in ("lao", "cran"):  # a view twice would weigh it double (campaign 12: lao [0, 0, 0] trained)
            angles = getattr(self, name)
            twice = sorted({a for a in angles if angles.count(a) > 1})
            self._require(not twice, name, f"lists {', '.join(_number(a) for a in twice)} more than once: give each "
                                           "angle once")


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
    seed: int = _f(0, ge=0, le=2**32 - 1)  # NumPy's and PyTorch's generators: 32 bits
    checkpoint_every: int = _f(500, ge=1)
    init: str | None = _f(None)
    freeze: tuple[str, ...] = _f((), choices=FREEZABLE)  # modules kept as initialised (target_encoder: no EMA step)

    def _check(self) -> None:
        self._require(self.warmup_steps <= self.total_steps, "warmup_steps",
                      f"must be <= train.total_steps ({self.total_steps}), got {self.warmup_steps}")
        trained = [m for m in FREEZABLE if m != "target_encoder"]  # the target encoder follows by EMA
        self._require(not set(trained) <= set(self.freeze), "freeze",
                      f"freezes every trained module ({', '.join(trained)}): nothing is left to train")


_SECTIONS = {"model": ModelConfig, "loss": LossConfig, "mask": MaskConfig, "data": DataConfig, "train": TrainConfig}


@dataclass
class XWinConfig:
    """The whole experiment: one section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.loss.mim > 0:  # the masks are drawn on the model's patch grid
            self.mask.check_grid(self.model.grid_size)

    @classmethod
    def from_dict(cls, data: dict | None) -> XWinConfig:
        """Build from nested mappings (e.g. parsed YAML); missing keys take their defaults."""
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise XWinInputError(None, f"config: expected a mapping of sections, got {type(data).__name__}")
        sections = {}
        for name, value in data.items():
            if name not in _SECTIONS:
                raise _fail(_clip(name), f"unknown section (expected one of: {', '.join(_SECTIONS)})")
            value = {} if value is None else value
            if not isinstance(value, dict):
                raise _fail(name, f"expected a mapping, got {type(value).__name__} {_quote(value)}")
            section_cls = _SECTIONS[name]
            known = [f.name for f in dataclasses.fields(section_cls)]
            for key in value:
                if key not in known:
                    raise _fail(f"{name}.{_clip(key)}", f"unknown key (expected one of: {', '.join(known)})")
            sections[name] = section_cls(**value)
        return cls(**sections)

    def to_dict(self) -> dict:
        """Plain nested dict (lists for pairs): safe for JSON, YAML and checkpoints; ``from_dict`` inverts it."""

        def plain(v):
            return list(v) if isinstance(v, tuple) else v

        return {name: {k: plain(v) for k, v in dataclasses.asdict(getattr(self, name)).items()}
                for name in _SECTIONS}


def _expanded_nodes(root: yaml.Node) -> int:
    """Nodes of a composed YAML document with every alias expanded, counted on its shared node graph (each node
    once, without recursion) and capped just above ``MAX_CONFIG_NODES``; a recursive alias counts as too many."""
    limit = MAX_CONFIG_NODES + 1
    counts: dict[int, int] = {}
    ancestors: set[int] = set()
    stack = [root]
    while stack:
        node = stack[-1]
        if id(node) in counts:
            stack.pop()
            continue
        kids = ([] if isinstance(node, yaml.ScalarNode) else
                [k for pair in node.value for k in pair] if isinstance(node, yaml.MappingNode) else node.value)
        if id(node) not in ancestors:
            ancestors.add(id(node))
            for kid in kids:
                if id(kid) in ancestors:
                    return limit
                stack.append(kid)
            continue
        ancestors.discard(id(node))
        counts[id(node)] = min(limit, 1 + sum(counts[id(k)] for k in kids))
        stack.pop()
    return counts[id(root)]


def _duplicate_key(root: yaml.Node) -> yaml.Node | None:
    """The first key node that repeats a key of the same mapping (PyYAML keeps the last value without a word), or
    None; each node visited once (after `_expanded_nodes` has bounded the graph)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen or isinstance(node, yaml.ScalarNode):
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if (key.tag, key.value) in keys:
                        return key
                    keys.add((key.tag, key.value))
                stack += [key, value]
        else:
            stack += node.value
    return None


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as the number YAML 1.2 says it is (YAML 1.1 wants a dot, ``1.0e-3``,
    and read a learning rate written the common way as the string '1e-3')."""


_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                    list("-+0123456789"))


def _parse_yaml(path: str | os.PathLike) -> Any:
    """The YAML document of ``path``, bounded before it is built: a regular file of at most ``MAX_CONFIG_BYTES``,
    UTF-8, at most ``MAX_CONFIG_NODES`` nodes once aliases are expanded."""
    from .io.validate import file_problem

    problem = file_problem(path)
    if problem:
        raise XWinInputError(path, f"cannot read config: {problem}")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise XWinInputError(path, f"cannot read config: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise XWinInputError(path, f"a config larger than {MAX_CONFIG_BYTES >> 20} MiB (not a YAML config?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise XWinInputError(path, f"not a YAML config: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                                   "is not UTF-8 text") from None
    try:
        loader = _ConfigLoader(text)  # checks the characters
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_nodes(node) > MAX_CONFIG_NODES:
                raise XWinInputError(path, f"the YAML expands to more than {MAX_CONFIG_NODES:,} values through its "
                                           "aliases (&anchor/*alias): refused unbuilt")
            twice = None if node is None else _duplicate_key(node)
            if twice is not None:
                raise XWinInputError(path, f"config key {_quote(twice.value)} appears twice in one mapping (line "
                                           f"{twice.start_mark.line + 1}): which value is meant?")
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except XWinInputError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(exc.problem or exc.context).split())
        raise XWinInputError(path, f"not valid YAML{where}: {_clip(what, 120)}") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer beyond Python's digit limit, a bad date
        text = (f"an integer of more than {sys.get_int_max_str_digits()} digits" if "int_max_str_digits" in str(exc)
                else _clip(" ".join(str(exc).split()), 120))
        raise XWinInputError(path, f"not valid YAML: {text}") from None
    except RecursionError:
        raise XWinInputError(path, "not valid YAML: nested too deeply") from None


MAX_BASE_DEPTH = 32  # `base:` links followed (the shipped configs chain 13)


def _read_yaml(path: str | os.PathLike, chain: tuple[str, ...] = ()) -> dict:
    """The YAML mapping of ``path``; a top-level ``base: FILE`` (relative to ``path``) is read first and the file's
    sections override it key by key."""
    data = _parse_yaml(path)
    if not isinstance(data, dict) or "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str):
        raise XWinInputError(path, f"config key 'base': must be a file name, got {_quote(base)}")
    base_path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), base))
    if base_path in chain:
        raise XWinInputError(path, f"config key 'base': {base} includes itself")
    if len(chain) >= MAX_BASE_DEPTH:  # named at the top: the chain is the problem, not its deepest file
        raise XWinInputError(chain[0], f"config key 'base': a chain of more than {MAX_BASE_DEPTH} configs (each "
                                       "naming the next as its base)")
    from .io.validate import file_problem

    problem = file_problem(base_path)  # a device or a link loop is no missing file
    if problem:
        what = f"no such file {base_path}" if problem == "does not exist" else f"{base_path} {problem}"
        raise XWinInputError(path, f"config key 'base': {what}")
    merged = _read_yaml(base_path, chain + (os.path.abspath(path),))
    if not isinstance(merged, dict):
        raise XWinInputError(base_path, "a config must be a mapping of sections")
    for name, section in data.items():
        if section is None and isinstance(merged.get(name), dict):  # campaign 12: it reset the section to defaults
            raise XWinInputError(path, f"config key '{_clip(name)}': empty (null) over the base config's section: "
                                       "remove it to keep the base's keys, or give the keys it changes")
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
    return os.path.join(os.path.dirname(__file__), "configs", f"{name}.yaml")
