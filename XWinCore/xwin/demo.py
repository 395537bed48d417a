"""`xwin demo`: an LAO sweep of the embedded chest CT, as a labelled contact sheet (PNG) and an animation (GIF), and the
embedded world model's predictions of the same views from the PA DRR alone, under the true DRRs (PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .drr import Projector
from .io import atomic_output, read_ct
from .sample_data import demo_ct_path


def sweep(projector: Projector, lao: np.ndarray, cran: float = 0.0, quiet: bool = False) -> np.ndarray:
    """(N, H, W) radiograph-mode DRRs at the given LAO angles (degrees) and one CRAN angle."""
    frames = []
    with torch.no_grad():
        for a in tqdm(lao, desc="demo sweep", unit="DRR", disable=quiet):
            frames.append(projector.render(float(a), cran, mode="radiograph")[0].cpu().numpy())
    return np.stack(frames)


def save_contact_sheet(frames, labels: list[str], path: Path, title: str, cols: int | None = None) -> Path:
    """Grid of frames (any sizes) with one label each, ``cols`` per row (default up to 7), written atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = cols or min(len(frames), 7)
    rows = -(-len(frames) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, frame, label in zip(axes.flat, frames, labels):
        ax.imshow(frame, cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def save_gif(frames: np.ndarray, path: Path, ms_per_frame: int = 120) -> Path:
    """Ping-pong animation of [0, 1] frames, written atomically."""
    from PIL import Image

    images = [Image.fromarray((np.clip(f, 0, 1) * 255).astype(np.uint8)) for f in frames]
    images = images + images[-2:0:-1]
    with atomic_output(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)
    return path


def world_model_sheet(ct, lao: np.ndarray, path: Path) -> Path:
    """True DRRs of ``ct`` (path or `Volume`) at ``lao`` (degrees, CRAN 0; one of them 0), rendered as the model's
    training pairs are (its detector and field, scan borders feathered: `prepared_ct`), above the embedded world
    model's predictions of the same views from the PA DRR alone, as a two-row contact sheet."""
    from .data.bank import BankSpec, bank_spec, prepared_ct, render_views
    from .predict import load_predictor

    predictor = load_predictor()
    spec = bank_spec(predictor.loaded.config)
    views = BankSpec(**{**spec.__dict__, "lao": tuple(float(a) for a in lao), "cran": (0.0,)})
    frames = render_views(Projector(prepared_ct(ct, spec), spec.geometry()), views, 0.0, np.zeros(3))
    pa = frames[int(np.argmin(np.abs(lao)))]
    predicted = predictor.predict(pa, lao, np.zeros_like(lao), simulated=True)
    labels = [f"DRR {_angle(a)}" for a in lao] + [f"predicted {_angle(a)}" for a in lao]
    title = "Embedded world model: every view predicted from the PA DRR alone (bottom) under the true DRRs (top)"
    return save_contact_sheet(list(frames) + list(predicted), labels, path, title, cols=len(lao))


def _angle(a: float) -> str:
    return f"{'LAO' if a >= 0 else 'RAO'} {abs(a):.0f}°"


def run_demo(out: Path, step: float = 15.0, quiet: bool = False) -> tuple[Path, Path, Path]:
    """Sweep LAO −90…90° (CRAN 0) over the embedded LIDC-IDRI-0001 CT; returns the (contact sheet, GIF, world-model
    sheet) paths."""
    out.mkdir(parents=True, exist_ok=True)
    ct = read_ct(demo_ct_path())
    projector = Projector(ct)
    lao = np.arange(-90.0, 90.0 + 1e-6, step)
    frames = sweep(projector, lao, quiet=quiet)
    labels = [_angle(a) for a in lao]
    title = "XWin DRR sweep of the embedded chest CT (LIDC-IDRI-0001, CC BY 3.0), PA reading convention"
    return (save_contact_sheet(frames, labels, out / "drr_sweep.png", title), save_gif(frames, out / "drr_sweep.gif"),
            world_model_sheet(ct, lao, out / "world_model.png"))
