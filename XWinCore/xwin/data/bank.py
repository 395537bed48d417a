"""The DRR bank: projections of (deformed) training CTs on a grid of C-arm poses, precomputed for CPU training.

On disk a bank is a folder written atomically (temporary folder + rename) holding
``images.npy`` (instances, views, H, W) float16 radiograph-mode DRRs in [0, 1], ``poses.npy`` (instances, views, 2)
the nominal (lao, cran) in degrees, and ``manifest.json`` with the geometry, the angle grid, and per instance the CT,
patient, augmentation seed, isocenter shift (LPS mm) and detector roll (degrees) used.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, get_type_hints

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose
from tqdm import tqdm

from ..config import DataConfig, ModelConfig, TrainConfig, XWinConfig
from ..drr import Projector
from ..errors import XWinInputError
from ..geometry import Geometry, rotation
from ..io import read_ct
from ..io.image import Volume
from ..io.writers import atomic_output
from .ct import FeatherBordersd, RandArmsDownd, RandCropZd, ct_transforms, deformation_transforms, to_volume

# The keys of the config's data section a bank is rendered from (angle grid, augmentation, resampling, C-arm
# geometry): `BankSpec` takes their types, defaults and ranges from `xwin.config.DataConfig`, the one schema.
DATA_KEYS = ("lao", "cran", "augmentations", "iso_shift_mm", "roll_deg", "spacing_mm", "sid", "sdd", "field_mm",
             "feather_mm", "crop_z", "habitus", "arms")


def _schema_field(section: type, name: str) -> tuple[str, type, dataclasses.Field]:
    """(name, type, field) of config ``section``'s key ``name``: the same default and range metadata."""
    (f,) = [f for f in dataclasses.fields(section) if f.name == name]
    return name, get_type_hints(section)[name], field(default=f.default, metadata=f.metadata)


_SchemaFields = dataclasses.make_dataclass(
    "_SchemaFields", [_schema_field(ModelConfig, "img_size"), *(_schema_field(DataConfig, k) for k in DATA_KEYS),
                      _schema_field(TrainConfig, "seed")], frozen=True,
    namespace={"__module__": __name__})


@dataclass(frozen=True)
class BankSpec(_SchemaFields):  # type: ignore[valid-type, misc]  # a base made at run time: its fields are Any
    """What a bank holds: ``img_size`` (``model.img_size``, the model's input size in pixels), the `DATA_KEYS` of the
    config's data section (angles in degrees, lengths in mm; see `xwin.config.DataConfig`), ``seed``
    (``train.seed``) and ``supersample``, the one key of its own. `bank_spec` builds it from a config."""

    supersample: int = 2  # render at supersample × img_size, then average-pool

    def geometry(self) -> Geometry:
        n = self.img_size * self.supersample
        return Geometry(sid=self.sid, sdd=self.sdd, height=n, width=n, pixel=self.field_mm / n)

    def poses(self) -> np.ndarray:
        """(views, 2) nominal (lao, cran) grid in degrees."""
        return np.array([(a, c) for c in self.cran for a in self.lao], dtype=np.float32)


def bank_spec(cfg: XWinConfig) -> BankSpec:
    """The bank the config asks for (angles in degrees, lengths in mm, image size from the model)."""
    return BankSpec(img_size=cfg.model.img_size, seed=cfg.train.seed, **{k: getattr(cfg.data, k) for k in DATA_KEYS})


@dataclass
class Bank:
    """A loaded bank (arrays memory-mapped)."""

    path: Path
    images: np.ndarray
    poses: np.ndarray
    manifest: dict = field(default_factory=dict)


def roll_pose(lao: float, cran: float, roll_deg: float, shift: np.ndarray) -> torch.Tensor:
    """4×4 pose: R = Rz(lao)·Rx(−cran)·R_y(roll) (roll about the PA beam axis), translation = isocenter shift (mm)."""
    r = rotation(lao, cran)[0]
    c, s = np.cos(np.radians(roll_deg)), np.sin(np.radians(roll_deg))
    roll = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = r @ roll
    pose[:3, 3] = torch.from_numpy(shift)
    return pose


def render_views(projector: Projector, spec: BankSpec, roll_deg: float, shift: np.ndarray) -> np.ndarray:
    """(views, img, img) radiograph-mode DRRs of one CT over the spec's pose grid."""
    poses = torch.stack([roll_pose(a, c, roll_deg, shift) for a, c in spec.poses()])
    with torch.no_grad():
        images = projector.render(pose=poses, mode="radiograph")
        images = F.avg_pool2d(images[:, None].float(), spec.supersample)[:, 0]
    return images.numpy()


def prepared_ct(ct, spec: BankSpec) -> Volume:
    """The volume every DRR of XWin's world model sees: a CT (path or `Volume`) resampled to ``spec.spacing_mm``
    isotropic (LPS mm, HU clipped) with its faces feathered to air over ``spec.feather_mm``. Training instances start
    from it; `xwin eval world` renders it."""
    item = ct_transforms(spacing_mm=spec.spacing_mm)({"ct": ct if isinstance(ct, Volume) else read_ct(ct)})
    return to_volume(FeatherBordersd("ct", spec.feather_mm)(item)["ct"])


def deformed_instances(cts: list[dict], spec: BankSpec, quiet: bool = False):
    """Yield the training instances of ``cts`` (dicts with ``path`` and ``patient_id``): per CT the undeformed volume
    then ``spec.augmentations`` random deformations (MONAI: habitus scale per axis, rotation, elastic, random z-crop;
    with probability ``spec.arms`` synthetic arms down at the sides, `RandArmsDownd`),
    each with a random isocenter shift (LPS mm) and detector roll (degrees), all drawn from ``spec.seed``; every
    volume's faces are feathered to air (`prepared_ct`). Yields dicts with ct_index, augmentation, seed, volume,
    shift, roll."""
    rng = np.random.default_rng(spec.seed)
    load = ct_transforms(spacing_mm=spec.spacing_mm)
    chain: list[Callable] = [deformation_transforms(scale=spec.habitus), RandCropZd("ct", spec.crop_z)]
    deform = Compose(chain + [RandArmsDownd("ct", spec.arms)] if spec.arms else chain)
    feather = FeatherBordersd("ct", spec.feather_mm)
    steps = tqdm(total=len(cts) * (spec.augmentations + 1), desc="CT instances", unit="CT", disable=quiet)
    for ct_index, ct in enumerate(cts):
        base = load({"ct": read_ct(ct["path"])})  # read here: MONAI would wrap a bad CT's error in its own
        for aug in range(spec.augmentations + 1):
            seed = int(rng.integers(2**31))
            if aug == 0:
                item, shift, roll = feather(base), np.zeros(3), 0.0
            else:
                deform.set_random_state(seed)
                item = feather(deform(dict(base)))
                shift, roll = rng.normal(0, spec.iso_shift_mm, 3), float(rng.normal(0, spec.roll_deg))
            yield {"ct_index": ct_index, "augmentation": aug, "seed": seed, "volume": to_volume(item["ct"]),
                   "shift": shift, "roll": roll}
            steps.update()
    steps.close()


def build_bank(cts: list[dict], out: str | os.PathLike, spec: BankSpec, quiet: bool = False) -> Path:
    """Render every instance of `deformed_instances` over the spec's pose grid into a bank folder ``out``."""
    out = Path(out)
    if not cts:
        raise XWinInputError(out, "no training CTs given for the DRR bank")
    images, poses, instances = [], [], []
    for inst in deformed_instances(cts, spec, quiet):
        projector = Projector(inst["volume"], spec.geometry())
        images.append(render_views(projector, spec, inst["roll"], inst["shift"]).astype(np.float16))
        poses.append(spec.poses())
        instances.append({"ct_index": inst["ct_index"], "augmentation": inst["augmentation"], "seed": inst["seed"],
                          "isocenter_lps_mm": (projector.isocenter + inst["shift"]).tolist(),
                          "roll_deg": inst["roll"]})
    manifest = {"spec": asdict(spec), "cts": [{k: str(v) for k, v in ct.items()} for ct in cts],
                "instances": instances, "display": "radiograph mode: 1 - exp(-line/4)"}
    with atomic_output(out, folder=True, make_parents=True) as tmp:  # replaces an older bank as a whole
        np.save(tmp / "images.npy", np.stack(images))
        np.save(tmp / "poses.npy", np.stack(poses))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def load_bank(path: str | os.PathLike) -> Bank:
    """Open a bank folder written by `build_bank` (images memory-mapped); a problem is reported against the file
    that has it: (instances, views, size, size) images, (instances, views, 2) finite poses (lao, cran in degrees)."""
    path = Path(path)
    parts: dict[str, Any] = {}
    for name, read in (("manifest.json", lambda f: json.loads(f.read_text())),
                       ("images.npy", lambda f: np.load(f, mmap_mode="r")), ("poses.npy", np.load)):
        try:
            parts[name] = read(path / name)
        except (OSError, ValueError, RecursionError) as exc:
            problem = ("is truncated: shorter than its header declares" if "mmap length" in str(exc)
                       else f"not a readable part of a DRR bank ({exc})")
            raise XWinInputError(path / name, problem) from None
    images, poses = parts["images.npy"], parts["poses.npy"]
    if images.ndim != 4 or images.shape[2] != images.shape[3] or 0 in images.shape or images.dtype.kind != "f":
        raise XWinInputError(path / "images.npy", f"holds a {images.dtype} array of shape {images.shape}; a DRR "
                                                  "bank's images are floats, (instances, views, size, size)")
    expected = (*images.shape[:2], 2)
    if poses.shape != expected or poses.dtype.kind != "f":
        raise XWinInputError(path / "poses.npy", f"holds a {poses.dtype} array of shape {poses.shape}; the bank's "
                                                 f"images of shape {images.shape} need float angles of shape "
                                                 f"{expected} (instances, views, lao/cran in degrees)")
    if not np.isfinite(poses).all():
        raise XWinInputError(path / "poses.npy", "holds NaN or infinite angles")
    return Bank(path, images, poses, parts["manifest.json"])
