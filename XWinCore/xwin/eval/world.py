"""`xwin eval world`: does the model predict the view after a rotation, on CTs it never saw?

Protocol. Every CT goes through the training resampling path (`xwin.data.bank.prepared_ct`) and is rendered K times
with the training jitter: per rendering an isocenter shift ~ N(0, ``data.iso_shift_mm``) per LPS axis (mm) and a
detector roll ~ N(0, ``data.roll_deg``) (degrees), shared by the context and its targets; the K jitters are drawn from
``seed`` and are the same for every CT. Context: the PA view (LAO 0, CRAN 0); targets: LAO −90…90° in 15° steps
(CRAN 0), at the model's size and geometry.

* Retrieval: a view's latent is `view_latent` (the layer-normed patch tokens, flattened, so the layout counts). The
  predicted latent of each target looks for its nearest (cosine) true target latent among the 13 of that rendering:
  top-1, within 15° (|retrieved − true| ≤ 15°) and the mean absolute angular error (degrees); a 95 % interval of
  top-1 from a bootstrap over the (CT, rendering) units.
* Images are scored at 128 × 128 (``SCORE_SIZE``) whatever the model's size, so that blur does not pay: with a smaller
  model the truth is rendered at 128 (same field of view) and predictions are upsampled (bilinear); with a larger one
  truth and prediction are both resampled to 128. PSNR (data range 1) from the MSE pooled over units, per angle and
  overall; SSIM (window 7) averaged, per angle and overall.
* Effective rank of the target embeddings (mean patch token of the target encoder) over all units × 13 views.
* ``decoder_ceiling``: PSNR / SSIM of the decoder fed the true views' target-encoder tokens (with the context and the
  action, as for a prediction), pooled and per angle: what a perfect latent prediction would score.

Baselines on the same renderings: ``copy_context`` (the context as every prediction; no latent retrieval),
``mean_projection`` (the model file's mean training DRR at the nearest pose), ``random_init`` (the architecture
untrained) and ``nearest_training_patient`` (the unjittered views of the training CT whose PA DRR is closest to the
context, in MSE). Image baselines are encoded by the model's target encoder (retrieval, effective rank).

``versus``: a second model scored on the very same units (it must render them alike: `UNIT_KEYS`), and the
differences model − versus per unit (top-1, angular error, SSIM) with 95 % paired bootstrap intervals over the units:
whether one model beats another on these renderings, where two overlapping unpaired intervals cannot tell.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import bank_spec, training_cts
from ..data.bank import BankSpec, prepared_ct, render_views
from ..drr import Projector
from ..errors import XWinInputError
from ..io.image import Volume
from ..models import create_model, view_latent
from ..models.losses import effective_rank, ssim
from ..predict import LoadedModel

TARGET_LAO = tuple(float(a) for a in range(-90, 91, 15))
SCORE_SIZE = 128
BASELINES = ("copy_context", "mean_projection", "random_init", "nearest_training_patient")
CEILING = "decoder_ceiling"  # the decoder fed the target encoder's tokens of the true view (+ context, action)
WITHIN_DEG = 15.0  # a retrieved angle this close (degrees) counts for within_15
KEYS = ("retrieval_top1", "retrieval_ci", "within_15", "angular_error_deg", "psnr", "ssim", "effective_rank")
# what the renderings of `render_units` depend on (`xwin.data.bank.BankSpec` fields): two models compared on the
# same units must agree on these
UNIT_KEYS = ("img_size", "supersample", "sid", "sdd", "field_mm", "spacing_mm", "feather_mm", "iso_shift_mm",
             "roll_deg")


# --- rendering ---------------------------------------------------------------------------------------------------

def view_spec(spec: BankSpec, lao=(0.0,) + TARGET_LAO, img_size: int | None = None) -> BankSpec:
    """``spec`` posed at ``lao`` (CRAN 0) and, when given, rendered at ``img_size`` (same field of view)."""
    return dataclasses.replace(spec, lao=tuple(float(a) for a in lao), cran=(0.0,),  # type: ignore[call-arg]
                               img_size=img_size or spec.img_size)  # ignored: BankSpec's fields are made at run time


def jitters(spec: BankSpec, renderings: int, seed: int = 0) -> list[tuple[float, np.ndarray]]:
    """``renderings`` (detector roll degrees, isocenter shift (3,) LPS mm) drawn like the training jitter."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(renderings):
        shift = rng.normal(0.0, spec.iso_shift_mm, 3)
        out.append((float(rng.normal(0.0, spec.roll_deg)), shift))
    return out


def render_targets(volume: Volume, spec: BankSpec, roll: float = 0.0,
                   shift: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(context (1, 1, S, S) PA view, targets (13, 1, S, S) at TARGET_LAO, CRAN 0) of ``volume`` as given (pass it
    through `prepared_ct` for the training path), in [0, 1]."""
    posed = view_spec(spec)
    array = render_views(Projector(volume, posed.geometry()), posed, roll, np.zeros(3) if shift is None else shift)
    images = torch.from_numpy(array)[:, None].float()
    return images[:1], images[1:]


def to_score_size(images: torch.Tensor, size: int = SCORE_SIZE) -> torch.Tensor:
    """(N, 1, s, s) images resampled to ``size`` (bilinear, align_corners=False; antialiased when shrinking)."""
    s = images.shape[-1]
    if s == size:
        return images.float()
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=s > size)


@dataclass
class Unit:
    """One jittered rendering of one CT: the context and targets at the model's size, the targets as scored."""

    context: torch.Tensor  # (1, 1, S, S)
    targets: torch.Tensor  # (13, 1, S, S)
    truth: torch.Tensor  # (13, 1, SCORE_SIZE, SCORE_SIZE)

    def to(self, device) -> Unit:
        return Unit(self.context.to(device), self.targets.to(device), self.truth.to(device))


def render_units(volume: Volume, spec: BankSpec, renderings: int, seed: int = 0,
                 score_size: int = SCORE_SIZE) -> list[Unit]:
    """The jittered renderings of one prepared CT (`prepared_ct`): targets at the model's size and, when the model is
    smaller than ``score_size``, rendered again at ``score_size`` as the truth."""
    posed = view_spec(spec)
    projector = Projector(volume, posed.geometry())
    fine = view_spec(spec, TARGET_LAO, score_size) if spec.img_size < score_size else None
    fine_projector = Projector(volume, fine.geometry()) if fine else None
    units = []
    for roll, shift in jitters(spec, renderings, seed):
        images = torch.from_numpy(render_views(projector, posed, roll, shift))[:, None].float()
        if fine:
            truth = torch.from_numpy(render_views(fine_projector, fine, roll, shift))[:, None].float()
        else:
            truth = to_score_size(images[1:], score_size)
        units.append(Unit(images[:1], images[1:], truth))
    return units


# --- scores of one unit ------------------------------------------------------------------------------------------

def retrieval(pred_latent: torch.Tensor, true_latent: torch.Tensor,
              lao=TARGET_LAO) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 retrieval by cosine of each predicted latent (N, F) among the true ones (N, F) at angles ``lao``:
    (correct (N,) bool, retrieved − true angle (N,) degrees, signed: + is toward LAO)."""
    sim = F.normalize(pred_latent.float(), dim=-1) @ F.normalize(true_latent.float(), dim=-1).T
    idx = sim.argmax(dim=1).cpu().numpy()
    angles = np.asarray(lao, dtype=np.float64)
    return idx == np.arange(len(idx)), angles[idx] - angles


def latent_scores(pred_latent: torch.Tensor, true_latent: torch.Tensor, lao=TARGET_LAO) -> dict:
    """``retrieval_top1``, ``within_15`` and ``angular_error_deg`` of `retrieval`."""
    correct, offset = retrieval(pred_latent, true_latent, lao)
    error = np.abs(offset)
    return {"retrieval_top1": float(correct.mean()), "within_15": float((error <= WITHIN_DEG + 1e-6).mean()),
            "angular_error_deg": float(error.mean())}


def per_image_scores(pred: torch.Tensor, true: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(MSE (N,), SSIM (N,)) of (N, 1, S, S) images in [0, 1] (predictions clamped to [0, 1]). SSIM: the training
    loss's `xwin.models.losses.ssim` with a 7 × 7 Gaussian window (σ 1.5 px, data range 1), not the loss's 11 × 11:
    the window every reported score (docs/results.md) was computed with."""
    pred, true = pred.clamp(0, 1).float(), true.float()
    mse = (pred - true).square().flatten(1).mean(1)
    similarity = ssim(pred, true, window=7, per_image=True)
    return mse.cpu().numpy().astype(np.float64), similarity.cpu().numpy().astype(np.float64)


def psnr(mse: float) -> float:
    """PSNR (dB, data range 1) of an MSE (floored at 1e-10, i.e. at most 100 dB)."""
    return float(10.0 * np.log10(1.0 / max(float(mse), 1e-10)))


def image_scores(pred: torch.Tensor, true: torch.Tensor) -> tuple[float, float]:
    """PSNR of the MSE pooled over the N images, and mean SSIM, of (N, 1, S, S) images in [0, 1] (same size).

    Pooling the MSE keeps PSNR finite when one prediction is exact."""
    mse, ssim = per_image_scores(pred, true)
    return psnr(mse.mean()), float(ssim.mean())


def _scores(unit: Unit, images: torch.Tensor, embed: torch.Tensor | None,
            hit: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """One unit's record: retrieval (correct, signed offset) or None, per-image MSE and SSIM at the score size,
    embeddings."""
    mse, ssim = per_image_scores(to_score_size(images, unit.truth.shape[-1]), unit.truth)
    correct, offset = hit if hit is not None else (None, None)
    return {"correct": correct, "offset": offset, "mse": mse, "ssim": ssim,
            "embed": None if embed is None else embed.float().cpu()}


def model_unit(model, unit: Unit, lao: torch.Tensor, true_tokens: torch.Tensor | None = None) -> dict:
    """A world model on one unit: predicted tokens from the context, retrieval among its own target encoder's
    latents of the true targets (``true_tokens`` when already known), the decoded prediction, and those true target
    embeddings."""
    n, zero = len(lao), torch.zeros_like(lao)
    context = unit.context.expand(n, -1, -1, -1)
    tokens = model.predict_view(context, lao, zero)
    true_tokens = model.target_encoder(unit.targets) if true_tokens is None else true_tokens
    hit = retrieval(view_latent(tokens), view_latent(true_tokens))
    return _scores(unit, model.decode(tokens, context, lao, zero), true_tokens.mean(1), hit)


def image_unit(model, unit: Unit, images: torch.Tensor, true_latent: torch.Tensor | None,
               tokens: torch.Tensor | None = None) -> dict:
    """A baseline that predicts images (13, 1, S, S): encoded by the model's target encoder (``tokens`` when
    already known) for the effective rank and, given the true targets' latents, for retrieval among them."""
    tokens = model.target_encoder(images) if tokens is None else tokens
    hit = None if true_latent is None else retrieval(view_latent(tokens), true_latent)
    return _scores(unit, images, tokens.mean(1), hit)


# --- training CTs (nearest_training_patient) ---------------------------------------------------------------------

@dataclass
class References:
    """Unjittered PA views (T, 1, S, S), target views (T, 13, 1, S, S) and their target-encoder tokens of T
    training CTs named ``names``."""

    names: list[str]
    pa: torch.Tensor
    targets: torch.Tensor
    tokens: torch.Tensor

    def nearest(self, context: torch.Tensor) -> int:
        """Index of the training CT whose PA view is closest (MSE) to ``context`` (1, 1, S, S)."""
        return int((self.pa - context).square().flatten(1).mean(1).argmin())


def training_references(model, spec: BankSpec, cts: list[tuple[str, object]], device="cpu",
                        quiet: bool = True) -> References:
    """`References` of the training CTs ``cts`` ((name, path or `Volume`) pairs), each through `prepared_ct`."""
    pas, target_sets = [], []
    for _, ct in tqdm(cts, desc="training CTs", unit="CT", disable=_quiet(quiet)):
        context, views = render_targets(prepared_ct(ct, spec), spec)
        pas.append(context[0])
        target_sets.append(views)
    targets = torch.stack(target_sets).to(device)
    tokens = torch.stack([model.target_encoder(t) for t in targets])
    return References([name for name, _ in cts], torch.stack(pas).to(device), targets, tokens)


def _training_cts(loaded: LoadedModel, train_cts) -> tuple[list[tuple[str, object]], str | None]:
    """(name, CT) pairs of ``train_cts`` or else of the model's config (`training_cts`), or ([], why not)."""
    if train_cts:
        return _named(train_cts, "train"), None
    try:
        return [(c["path"], c["path"]) for c in training_cts(loaded.config)], None
    except XWinInputError as exc:
        return [], f"no training CTs: {exc} (give them with --train-ct)"


# --- pooling -----------------------------------------------------------------------------------------------------

def bootstrap_ci(values, draws: int = 1000, seed: int = 0) -> list[float]:
    """95 % percentile interval of the mean of ``values`` (one per unit) over ``draws`` resamples with replacement."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(draws, len(v)))
    lo, hi = np.percentile(v[idx].mean(axis=1), [2.5, 97.5])
    return [float(lo), float(hi)]


def _r(x):
    return None if x is None else round(float(x), 4)


def summarize(records: list[dict] | None, seed: int = 0) -> dict:
    """The pooled scores (``KEYS``) of unit records (None: an unavailable baseline, every value null)."""
    if not records:
        return dict.fromkeys(KEYS)
    mse, ssim = np.stack([r["mse"] for r in records]), np.stack([r["ssim"] for r in records])
    out = {"retrieval_top1": None, "retrieval_ci": None, "within_15": None, "angular_error_deg": None,
           "psnr": _r(psnr(mse.mean())), "ssim": _r(ssim.mean()), "effective_rank": None}
    if records[0]["correct"] is not None:
        correct, error = np.stack([r["correct"] for r in records]), np.abs(np.stack([r["offset"] for r in records]))
        out.update(retrieval_top1=_r(correct.mean()), within_15=_r((error <= WITHIN_DEG + 1e-6).mean()),
                   retrieval_ci=[_r(x) for x in bootstrap_ci(correct.mean(axis=1), seed=seed)],
                   angular_error_deg=_r(error.mean()))
    if records[0]["embed"] is not None:
        out["effective_rank"] = _r(effective_rank(torch.cat([r["embed"] for r in records])))
    return out


def paired_difference(records: list[dict], versus: list[dict], seed: int = 0) -> dict:
    """Mean per-unit differences records − versus (same units, same order) of retrieval top-1, angular error
    (degrees) and SSIM, each with a 95 % paired bootstrap interval over the units (``*_ci``)."""
    out: dict[str, Any] = {}
    for key, per_unit in (("retrieval_top1", lambda r: r["correct"].mean()),
                          ("angular_error_deg", lambda r: np.abs(r["offset"]).mean()),
                          ("ssim", lambda r: r["ssim"].mean())):
        diff = np.array([per_unit(a) - per_unit(b) for a, b in zip(records, versus)])
        out[key], out[f"{key}_ci"] = _r(diff.mean()), [_r(x) for x in bootstrap_ci(diff, seed=seed)]
    return out


def per_angle(records: Mapping[str, list[dict] | None]) -> list[dict]:
    """Per target angle: ``{"lao", name: {"psnr", "ssim", "retrieval_top1", "offset_deg"}}`` pooled over units;
    ``offset_deg`` is the mean signed retrieved − true angle (degrees, + toward LAO: a model that shrinks its
    rotations toward PA shows − at LAO 90 and + at RAO 90). Null where a name is unavailable or has no retrieval."""
    rows = []
    for j, a in enumerate(TARGET_LAO):
        row: dict[str, Any] = {"lao": a}
        for name, recs in records.items():
            cell = dict.fromkeys(("psnr", "ssim", "retrieval_top1", "offset_deg"))
            if recs:
                cell.update(psnr=_r(psnr(np.mean([r["mse"][j] for r in recs]))),
                            ssim=_r(np.mean([r["ssim"][j] for r in recs])))
            if recs and recs[0]["correct"] is not None:
                cell.update(retrieval_top1=_r(np.mean([r["correct"][j] for r in recs])),
                            offset_deg=_r(np.mean([r["offset"][j] for r in recs])))
            row[name] = cell
        rows.append(row)
    return rows


# --- the evaluation ----------------------------------------------------------------------------------------------

def _quiet(quiet: bool) -> bool:
    return quiet or not sys.stderr.isatty()


def _named(cts, prefix: str = "ct") -> list[tuple[str, object]]:
    """(name, path or `Volume`) pairs of a dict or list: a path is its own name, a `Volume` gets ``prefix`` + index."""
    if isinstance(cts, dict):
        return [(str(k), v) for k, v in cts.items()]
    return [(f"{prefix}{i}" if isinstance(c, Volume) else str(c), c) for i, c in enumerate(cts)]


def _mean_images(loaded: LoadedModel, lao: torch.Tensor) -> torch.Tensor | None:
    """The model file's mean training DRR at the pose nearest each (lao, 0), (13, 1, S, S), or None."""
    if loaded.mean_projection is None:
        return None
    assert loaded.mean_poses is not None  # load_model gives the poses with the mean projection
    want = torch.stack([lao, torch.zeros_like(lao)], dim=1)
    idx = torch.cdist(want, loaded.mean_poses.float().to(lao.device)).argmin(dim=1)
    return loaded.mean_projection.to(lao.device)[idx][:, None].float()


def _unit_records(model, untrained, unit: Unit, lao, mean, refs: References | None,
                  versus=None) -> tuple[dict, str | None]:
    """Every method's record on one unit (and the ``versus`` model's), and the name of the nearest training CT (None
    without references)."""
    true_tokens = model.target_encoder(unit.targets)
    true_latent = view_latent(true_tokens)
    context, zero = unit.context.expand(len(lao), -1, -1, -1), torch.zeros_like(lao)
    out = {"model": model_unit(model, unit, lao, true_tokens), "random_init": model_unit(untrained, unit, lao),
           "decoder_ceiling": _scores(unit, model.decode(true_tokens, context, lao, zero), None, None),
           "copy_context": image_unit(model, unit, unit.context.expand(len(lao), -1, -1, -1), None),
           "mean_projection": None if mean is None else image_unit(model, unit, mean, true_latent),
           "nearest_training_patient": None}
    if versus is not None:
        out["versus"] = model_unit(versus, unit, lao)
    if refs is None:
        return out, None
    k = refs.nearest(unit.context)
    out["nearest_training_patient"] = image_unit(model, unit, refs.targets[k], true_latent, refs.tokens[k])
    return out, refs.names[k]


def _result(records: Mapping[str, list[dict] | None], seed: int, notes: dict) -> dict:
    out = {name: summarize(records[name], seed) for name in ("model",) + BASELINES}
    for name, note in notes.items():
        if note:
            out[name]["note"] = note
    ceiling = summarize(records[CEILING], seed)
    result = {"model": out.pop("model"), "baselines": out, CEILING: {k: ceiling[k] for k in ("psnr", "ssim")}}
    versus = records.get("versus")
    if versus is not None:
        model = records["model"]
        assert model is not None  # the model's records are always there
        result["versus"] = {**summarize(versus, seed), "difference": paired_difference(model, versus, seed)}
    return result


@torch.no_grad()
def evaluate_world(loaded: LoadedModel, cts, renderings: int = 8, seed: int = 0, train_cts=None,
                   quiet: bool = True, score_size: int = SCORE_SIZE, versus: LoadedModel | None = None) -> dict:
    """The evaluation of the module docstring on ``cts`` (paths or `Volume`s, or a dict name → either).

    ``train_cts`` (same forms) are the candidates of ``nearest_training_patient``; default: the model config's
    training CTs (`xwin.data.training_cts`; paths relative to the working directory). Returns ``{"model",
    "baselines", "per_angle", "per_ct", "renderings", "score_size"}`` (see ``xwin eval world --help``), with
    ``versus`` also ``"versus"`` (its scores and ``"difference"``, `paired_difference`) pooled and per CT."""
    if renderings < 1:
        raise XWinInputError(None, f"renderings must be >= 1 (got {renderings})")
    model = loaded.model.eval()
    device = next(model.parameters()).device
    spec = bank_spec(loaded.config)
    if versus is not None:
        other = bank_spec(versus.config)
        differ = [f"{k} {getattr(spec, k)} vs {getattr(other, k)}" for k in UNIT_KEYS
                  if getattr(spec, k) != getattr(other, k)]
        if differ:
            raise XWinInputError(None, "--versus: the two models render their views differently ("
                                       f"{'; '.join(differ)}): they cannot be scored on the same renderings")
        versus.model.eval().to(device)
    lao = torch.tensor(TARGET_LAO, device=device)
    torch.manual_seed(seed)
    untrained = create_model(loaded.config).eval().to(device)
    mean = _mean_images(loaded, lao)
    named, note = _training_cts(loaded, train_cts)
    refs = training_references(model, spec, named, device, quiet) if named else None
    notes = {"mean_projection": None if mean is not None else "the model file holds no mean projection",
             "nearest_training_patient": note}
    names = ("model",) + BASELINES + (CEILING,) + (("versus",) if versus is not None else ())
    pooled: dict[str, list | None] = {name: [] for name in names}
    per_ct = []
    steps = tqdm(total=len(_named(cts)) * renderings, desc="eval world", unit="rendering", disable=_quiet(quiet))
    for name, ct in _named(cts):
        mine: dict[str, list] = {n: [] for n in names}  # a record, or None where a baseline is unavailable
        picked: list[str | None] = []
        for unit in render_units(prepared_ct(ct, spec), spec, renderings, seed, score_size):
            recs, nearest = _unit_records(model, untrained, unit.to(device), lao, mean, refs,
                                          None if versus is None else versus.model)
            for n in names:
                mine[n].append(recs[n])
            picked.append(nearest)
            steps.update()
        kept = {n: None if any(r is None for r in v) else v for n, v in mine.items()}
        per_ct.append({"ct": name, **_result(kept, seed, {}), "nearest_training_ct": picked})
        for n in names:
            so_far, more = pooled[n], kept[n]
            pooled[n] = None if so_far is None or more is None else so_far + more
    steps.close()
    return {**_result(pooled, seed, notes), "per_angle": per_angle(pooled), "per_ct": per_ct,
            "renderings": renderings, "score_size": score_size}


# --- text --------------------------------------------------------------------------------------------------------

def _f(v, p: int = 3) -> str:
    return "—" if v is None else f"{v:.{p}f}"


def format_table(result: dict) -> str:
    """A readable report of `evaluate_world`: pooled scores, PSNR / SSIM per target angle, then the model's
    retrieval per target angle."""
    methods = {"model": result["model"], **result["baselines"]}
    ceiling = {**dict.fromkeys(KEYS), **result[CEILING]}
    lines = [f"{result['renderings']} jittered renderings per CT, {len(result['per_ct'])} CT(s); images scored at "
             f"{result['score_size']}²", "",
             f"{'':26} {'top-1':>6} {'95% CI':>15} {'≤15°':>6} {'err°':>6} {'PSNR':>6} {'SSIM':>6} {'eff.rank':>8}"]
    for name, m in methods.items():
        ci = "—" if m["retrieval_ci"] is None else f"[{m['retrieval_ci'][0]:.3f}, {m['retrieval_ci'][1]:.3f}]"
        lines.append(f"{name:26} {_f(m['retrieval_top1']):>6} {ci:>15} {_f(m['within_15']):>6} "
                     f"{_f(m['angular_error_deg'], 1):>6} {_f(m['psnr'], 2):>6} {_f(m['ssim']):>6} "
                     f"{_f(m['effective_rank'], 2):>8}" + (f"  ({m['note']})" if m.get("note") else ""))
    lines.append(f"{CEILING + ' (true tokens)':26} {'':>6} {'':>15} {'':>6} {'':>6} {_f(ceiling['psnr'], 2):>6} "
                 f"{_f(ceiling['ssim']):>6}")
    methods[CEILING] = ceiling
    lines += ["", "PSNR / SSIM per target angle (LAO°, CRAN 0)",
              f"{'LAO':>5} " + " ".join(f"{n:>24}" for n in methods)]
    for row in result["per_angle"]:
        cells = [f"{_f(row[n]['psnr'], 2)} / {_f(row[n]['ssim'])}" for n in methods]
        lines.append(f"{row['lao']:>5.0f} " + " ".join(f"{c:>24}" for c in cells))
    lines += ["", "model retrieval per target angle: top-1, mean signed offset of the retrieved angle (° + toward LAO)",
              f"{'LAO':>5} {'top-1':>6} {'offset°':>8}"]
    for row in result["per_angle"]:
        m = row["model"]
        lines.append(f"{row['lao']:>5.0f} {_f(m['retrieval_top1']):>6} {_f(m['offset_deg'], 1):>8}")
    if "versus" in result:
        v, d = result["versus"], result["versus"]["difference"]
        lines += ["", f"versus: top-1 {_f(v['retrieval_top1'])}, error {_f(v['angular_error_deg'], 1)}°, SSIM "
                      f"{_f(v['ssim'])}; model − versus on the same renderings [95 % paired bootstrap]:"]
        for key, p in (("retrieval_top1", 3), ("angular_error_deg", 1), ("ssim", 3)):
            lo, hi = d[f"{key}_ci"]
            lines.append(f"  {key:18} {d[key]:+.{p}f} [{lo:+.{p}f}, {hi:+.{p}f}]")
    return "\n".join(lines)
