"""World-model results for docs/results.md: view prediction on held-out CTs, one CXR → volume, linear probing.

    .venv/bin/python bench/results.py [--checkpoint Resources/Models/xwin_default.safetensors] [--out docs/results.md]

1. `xwin eval world` on the held-out CT(s) (8 jittered renderings each; the model and its four baselines).
2. Single-CXR path on the held-out CT: its PA DRR is the input "CXR"; the model predicts 13 views over LAO −90…90,
   SART reconstructs them; PSNR/SSIM/RMSE against the true CT on the voxels every view sees. Beside it: the "mean
   training CT" baseline (the training CTs, each centred on its grid centre, resampled and averaged) and the same
   reconstruction from the 13 *true* DRRs at the model's resolution (the ceiling of this geometry).
3. `xwin eval probe` on ../shared/data/cxr/labels.csv, its built-in tasks decided within one source each (sex on
   MHH + NIH, PA vs AP view on MHH, pneumonia vs normal on Kermany), model vs random init and any
   `--ablation NAME=PATH` models (e.g. the MIM-only ablation trained by configs/cpu_small_mim_only.yaml).
4. How patient-specific the latent is: the true target latents of one CT at LAO −90…90° used to retrieve the angle
   among another CT's 13 true target latents (no prediction involved).
5. How jitter-specific the latent is: the held-out renderings' true latents retrieved by true latents rendered without
   the AP shift a PA context cannot show, or without jitter (the retrieval ceiling of a PA-context predictor).
6. `xwin eval domain`: the 150 real CXRs against 16 jittered PA DRRs of each CT (training and held-out), model vs
   random init.
The section between `<!-- results:start -->` and `<!-- results:end -->` of the output file is replaced.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def single_cxr(loaded, predictor, ct, training_cts, views=13, arc=180.0, size=96) -> dict:
    """PSNR/SSIM/RMSE (HU) vs the true CT of: the model's volume, the mean training CT, the true-DRR ceiling."""
    from xwin.data import bank_spec
    from xwin.data.bank import BankSpec, prepared_ct, render_views
    from xwin.drr import Projector
    from xwin.geometry import carm_views
    from xwin.recon import (
        compare,
        coverage,
        default_grid,
        model_geometry,
        orbit_angles,
        radiograph_to_line,
        reconstruct,
        reconstruct_from_cxr,
        resample_to_grid,
        to_volume,
    )
    from xwin.recon.grid import Grid

    spec = bank_spec(loaded.config)
    pa = render_views(Projector(prepared_ct(ct, spec), spec.geometry()),  # the training path, as the model saw DRRs
                      BankSpec(**{**spec.__dict__, "lao": (0.0,), "cran": (0.0,)}), 0.0, np.zeros(3))[0]
    iso = ct.center
    geometry = model_geometry(loaded.config)
    lao = orbit_angles(views, arc)
    grid = default_grid(geometry, iso, size)
    seen = coverage(carm_views(geometry, iso, lao, np.zeros_like(lao)), grid).numpy() >= views - 0.5
    model_vol = reconstruct_from_cxr(predictor, pa, views=views, arc=arc, method="sart", size=size, isocenter=iso,
                                     simulated=True)
    true = render_views(Projector(ct, spec.geometry()),
                        BankSpec(**{**spec.__dict__, "lao": tuple(lao), "cran": (0.0,)}), 0.0, np.zeros(3))
    mu = reconstruct(torch.from_numpy(radiograph_to_line(true)), carm_views(geometry, iso, lao, np.zeros_like(lao)),
                     grid, "sart")
    ceiling = to_volume(grid, mu, 0.0193)
    means = []
    for other in training_cts:
        shifted = Grid(grid.shape_ijk, grid.spacing, grid.origin - iso + other.center, grid.direction)
        means.append(resample_to_grid(other, shifted).array)
    mean_vol = ceiling.with_array(np.mean(means, axis=0).astype(np.float32))
    return {name: {k: round(float(v), 3) for k, v in compare(vol, ct, mask=seen).items()}
            for name, vol in (("model", model_vol), ("mean_training_ct", mean_vol), ("true_drr_sart", ceiling))}


@torch.no_grad()
def cross_patient_retrieval(loaded, volumes: dict) -> dict:
    """{(a, b): top-1} where CT a's true target latent at each of the 13 angles retrieves among CT b's 13."""
    from xwin.data import bank_spec
    from xwin.data.bank import prepared_ct
    from xwin.eval.world import latent_scores, render_targets
    from xwin.models import view_latent

    spec = bank_spec(loaded.config)
    latents = {name: view_latent(loaded.model.target_encoder(render_targets(prepared_ct(v, spec), spec)[1]))
               for name, v in volumes.items()}
    return {(a, b): latent_scores(latents[a], latents[b])["retrieval_top1"] for a in latents for b in latents}


@torch.no_grad()
def jitter_ceilings(loaded, volumes: dict, renderings: int = 8) -> dict:
    """{name: {"ap_blind", "unjittered"}} top-1 over `xwin eval world`'s ``renderings`` jitters (detector roll in
    degrees, isocenter shift in LPS mm): each rendering's 13 true target latents retrieved by the same CT's true
    latents rendered with the shift's AP (LPS y) component set to 0 (``ap_blind``: all a PA context cannot show, the
    view after a rotation otherwise known exactly) or with no jitter at all (``unjittered``)."""
    from xwin.data import bank_spec
    from xwin.data.bank import prepared_ct, render_views
    from xwin.drr import Projector
    from xwin.eval.world import jitters, latent_scores, view_spec
    from xwin.models import view_latent

    spec = bank_spec(loaded.config)
    posed = view_spec(spec)
    out = {}
    for name, volume in volumes.items():
        projector = Projector(prepared_ct(volume, spec), posed.geometry())

        def latent(roll: float, shift: np.ndarray) -> torch.Tensor:
            views = torch.from_numpy(render_views(projector, posed, roll, shift))[1:, None].float()
            return view_latent(loaded.model.target_encoder(views))

        scores: dict[str, list[float]] = {"ap_blind": [], "unjittered": []}
        for roll, shift in jitters(spec, renderings):
            truth = latent(roll, shift)
            for key, guess in (("ap_blind", latent(roll, shift * np.array([1.0, 0.0, 1.0]))),
                               ("unjittered", latent(0.0, np.zeros(3)))):
                scores[key].append(latent_scores(guess, truth)["retrieval_top1"])
        out[name] = {k: float(np.mean(v)) for k, v in scores.items()}
    return out


def identity_figure(predictor, films: list[Path], drrs: np.ndarray, path: Path) -> Path:
    """Contact sheet: real films and held-out PA DRRs (top), their decoded Δ = 0 prediction, their LAO 45°
    prediction."""
    from xwin.data.cxr import to_model_input
    from xwin.demo import save_contact_sheet
    from xwin.io import read_radiograph

    size = predictor.size
    inputs = [to_model_input(read_radiograph(f).array, size) for f in films] + list(drrs)
    predicted = [predictor.predict(x, [0.0, 45.0], [0.0, 0.0], simulated=i >= len(films))
                 for i, x in enumerate(inputs)]
    names = [f"film {f.stem[:10]}" for f in films] + [f"held-out DRR {i + 1}" for i in range(len(drrs))]
    frames = inputs + [p[0] for p in predicted] + [p[1] for p in predicted]
    labels = names + ["Δ = 0 decoded"] * len(inputs) + ["LAO 45° predicted"] * len(inputs)
    return save_contact_sheet(frames, labels, path, "Real films vs DRRs through the embedded model: input (top), "
                              "its own view predicted back (middle), LAO 45° (bottom)", cols=len(inputs))


def write_section(path: Path, text: str) -> None:
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    old = path.read_text() if path.is_file() else "# Results\n\n"
    block = f"{start}\n{text}\n{end}"
    new = re.sub(re.escape(start) + ".*?" + re.escape(end), block, old, flags=re.S) if start in old else \
        old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def _row(name, m):
    f = lambda v, p: "—" if v is None else f"{v:.{p}f}"  # noqa: E731
    ci = "" if m["retrieval_ci"] is None else f" [{m['retrieval_ci'][0]:.3f}, {m['retrieval_ci'][1]:.3f}]"
    return (f"| {name} | {f(m['retrieval_top1'], 3)}{ci} | {f(m['within_15'], 3)} | {f(m['angular_error_deg'], 1)} | "
            f"{f(m['psnr'], 2)} | {f(m['ssim'], 3)} | {f(m['effective_rank'], 1)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "Resources/Models/xwin_default.safetensors"))
    ap.add_argument("--out", default=str(ROOT / "docs/results.md"))
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--figure", default=str(ROOT / "docs/screenshots/domain_identity.png"),
                    help="contact sheet of real films and DRRs through the model (PNG)")
    ap.add_argument("--ablation", action="append", default=[], metavar="NAME=PATH",
                    help="another model for the probe table, e.g. mim_only=runs/cpu_small_mim_only (repeatable)")
    ns = ap.parse_args(argv)
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: results need the shared data")
    from xwin.data import bank_spec, split_cts, training_cts
    from xwin.eval.domain import evaluate_domain
    from xwin.eval.probe import TASKS, probe, read_rows, task_set
    from xwin.eval.world import evaluate_world
    from xwin.io import read_ct
    from xwin.models import create_model
    from xwin.predict import LoadedModel, Predictor, load_model

    t0 = time.time()
    loaded = load_model(ns.checkpoint)
    cfg = loaded.config
    held = [str(p) for p in split_cts(SHARED / "ct" / "cases.csv", "eval")]  # never trained on (CC BY-NC)
    held_cts = [read_ct(p) for p in held]
    world = evaluate_world(loaded, {Path(p).name: v for p, v in zip(held, held_cts)})
    train_cts = [read_ct(c["path"]) for c in training_cts(cfg)]
    volume = single_cxr(loaded, Predictor(loaded), held_cts[0], train_cts)
    shown = Path(ns.checkpoint).resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    lines = [f"Model: `{shown}`. Held-out CT(s): the eval split of ../shared/data/ct/cases.csv, "
             f"{', '.join(f'`{Path(p).name}`' for p in held)} (patients never trained on). "
             "Command: `.venv/bin/python bench/results.py "
             + " ".join(argv if argv is not None else sys.argv[1:]) + "` (run from the "
             "repository root; the held-out CT and labels come from ../shared/data).", "",
             "### View prediction on CTs never trained on (`xwin eval world`)", "",
             f"Each CT rendered {world['renderings']} times with the training jitter (isocenter shift, detector roll) "
             "through the training resampling path; PA context → 13 targets at LAO −90…90° (15° steps, CRAN 0); "
             "retrieval top-1 among the 13 target latents of the rendering [95 % bootstrap over CT × rendering], "
             "share retrieved within 15°, mean angular error (°); PSNR (dB) / SSIM of the decoded projection vs the "
             f"true DRR scored at {world['score_size']}² (the {cfg.model.img_size}² prediction upsampled, the truth "
             "rendered at that size); effective rank of the target embeddings.", "",
             "| | retrieval top-1 | within 15° | error (°) | PSNR | SSIM | eff. rank |",
             "|---|---:|---:|---:|---:|---:|---:|",
             _row("**model**", world["model"])]
    lines += [_row(k, v) for k, v in world["baselines"].items()]
    ceiling = world["decoder_ceiling"]
    lines += [f"| decoder fed the true tokens (ceiling) | | | | {ceiling['psnr']:.2f} | {ceiling['ssim']:.3f} | |"]
    shown_names = ("model", "copy_context", "nearest_training_patient", "mean_projection", "decoder_ceiling")
    lines += ["", "SSIM (PSNR dB) per target angle, pooled over CTs × renderings; last column: the model's retrieval "
              "top-1 and the mean signed offset of its retrieved angle (°, + toward LAO):", "",
              "| LAO | " + " | ".join(shown_names) + " | model top-1 (offset °) |",
              "|---:|" + "---:|" * (len(shown_names) + 1)]
    for row in world["per_angle"]:
        cells = ["—" if row[n]["ssim"] is None else f"{row[n]['ssim']:.3f} ({row[n]['psnr']:.1f})" for n in shown_names]
        m = row["model"]
        cells.append(f"{m['retrieval_top1']:.3f} ({m['offset_deg']:+.1f})")
        lines.append(f"| {row['lao']:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "Per CT (model: retrieval top-1 / within 15° / error ° / SSIM; copy_context SSIM; nearest training "
              "patient SSIM):", ""]
    for ct in world["per_ct"]:
        m, b = ct["model"], ct["baselines"]
        lines.append(f"* `{ct['ct']}`: {m['retrieval_top1']:.3f} / {m['within_15']:.3f} / {m['angular_error_deg']:.1f}"
                     f" / {m['ssim']:.3f}; copy_context {b['copy_context']['ssim']:.3f}; nearest training patient "
                     + ("—" if b['nearest_training_patient']['ssim'] is None
                        else f"{b['nearest_training_patient']['ssim']:.3f}"))
    pooled = {k: world[k] for k in ("model", "baselines", "decoder_ceiling", "renderings", "score_size")}
    lines += ["", "```json", json.dumps(pooled), "```", "",
              "### One CXR → volume (`xwin reconstruct CXR`), on the held-out CT", "",
              "Input: the held-out CT's PA DRR as the radiograph; 13 predicted views over LAO −90…90°, SART "
              "(one view per "
              "update, 10 iterations); scored on "
              "the 96³ (4 mm) grid voxels every view sees, HU clipped to [−1000, 1000] for PSNR/SSIM.", "",
              "| volume | PSNR (dB) | SSIM | RMSE (HU) |", "|---|---:|---:|---:|"]
    names = {"model": "**world model from one DRR**", "mean_training_ct": "mean training CT (baseline)",
             "true_drr_sart": "13 true DRRs, same SART (ceiling of this geometry)"}
    lines += [f"| {names[k]} | {v['psnr']:.2f} | {v['ssim']:.3f} | {v['rmse_hu']:.1f} |" for k, v in volume.items()]
    if not ns.no_probe:
        rows = read_rows(SHARED / "cxr/labels.csv")
        sets = [task_set(rows, t, SHARED / "cxr", SHARED / "cxr/labels.csv") for t in TASKS.values()]
        torch.manual_seed(0)
        encoders = {"model": loaded.model.context_encoder, "random_init": create_model(cfg).context_encoder}
        seen = {"model": cfg.data.cxr, "random_init": ()}
        for item in ns.ablation:
            name, _, path = item.partition("=")
            other = load_model(path)
            encoders[name], seen[name] = other.model.context_encoder, other.config.data.cxr
        pr = probe(encoders, sets, cfg.model.img_size, folds=5, shots=(5, 10), seen=seen)
        lines += ["", "### Linear probing and k-shot fine-tuning (`xwin eval probe`)", "",
                  "Each task decides its label within one image source (two for `sex`), so that the source "
                  "predicts little of it (the source-only column says how much): "
                  + "; ".join(f"`{k}` {t['description']}" for k, t in pr["tasks"].items())
                  + f". {pr['folds']} patient-level folds; AUROC of pooled out-of-fold scores [95 % interval, "
                  "bootstrap over patients]. Source-only: AUROC of a score that knows only the film's source. "
                  "Transductive: the encoder was trained on these films (its `data.cxr` holds them).",
                  "", "| task | images / patients / positives | source-only | encoder | transductive | linear | "
                  "5-shot | 10-shot |", "|---|---|---:|---|---|---|---|---|"]
        cell = lambda m: f"{m['auroc']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"  # noqa: E731
        for task, t in pr["tasks"].items():
            for name, r in t["encoders"].items():
                lines.append(f"| {task} | {t['n_images']} / {t['n_patients']} / {t['n_positive']} | "
                             f"{t['source_auroc']:.3f} | {name} | {'yes' if r['transductive'] else 'no'} | "
                             f"{cell(r['linear'])} | {cell(r['5_shot'])} | {cell(r['10_shot'])} |")
    torch.manual_seed(0)
    untrained = LoadedModel(create_model(cfg).eval(), cfg)
    names = [Path(p).name.split(".")[0] for p in held] + [c["patient_id"] for c in training_cts(cfg)]
    volumes = dict(zip(names, held_cts + train_cts))
    cross = cross_patient_retrieval(loaded, volumes)
    lines += ["", "### How patient-specific the latent is", "",
              "Top-1 angle retrieval with *true* latents across patients: the target encoder's latent of the row CT at "
              "each of the 13 angles looks for its angle among the column CT's 13 (the diagonal is 1 by definition; "
              "chance 0.077). Low values mean a view's latent is mostly the patient's anatomy, so predicting the "
              "right angle for a new patient needs its rotated anatomy, not an angle code.", "",
              "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {a} | " + " | ".join(f"{cross[a, b]:.2f}" for b in names) + " |" for a in names]
    held_volumes = {Path(p).name: v for p, v in zip(held, held_cts)}
    ceilings = jitter_ceilings(loaded, held_volumes, world["renderings"])
    model_top1 = {c["ct"]: c["model"]["retrieval_top1"] for c in world["per_ct"]}
    lines += ["", "### How jitter-specific the latent is", "",
              "The held-out renderings above, retrieved by *true* latents instead of predictions: the same CT's 13 "
              "views rendered with the rendering's isocenter shift minus its AP (LPS y) component (what a PA context "
              "cannot show: the view after a rotation otherwise known exactly), or without any jitter. The first "
              "column bounds what any predictor from the PA view reaches in this latent; a low second column means "
              "the latent encodes where the anatomy sits on the detector, so the predictor must carry the context's "
              "shift and roll into every view.", "",
              "| CT | model | AP shift unknown | no jitter |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {model_top1[n]:.3f} | {c['ap_blind']:.3f} | {c['unjittered']:.3f} |"
              for n, c in ceilings.items()]
    lines += [f"| pooled | {world['model']['retrieval_top1']:.3f} | "
              f"{np.mean([c['ap_blind'] for c in ceilings.values()]):.3f} | "
              f"{np.mean([c['unjittered'] for c in ceilings.values()]):.3f} |"]
    gaps = {"model": evaluate_domain(loaded, SHARED / "cxr", volumes),
            "random_init": evaluate_domain(untrained, SHARED / "cxr", volumes)}
    g = gaps["model"]
    from xwin.data.bank import prepared_ct
    from xwin.data.cxr import find_images
    from xwin.eval.domain import simulated_pa_views
    spec = bank_spec(cfg)
    figure = identity_figure(Predictor(loaded), find_images(SHARED / "cxr")[:4],
                             simulated_pa_views(prepared_ct(held_cts[0], spec), spec, 2)[:, 0].numpy(),
                             Path(ns.figure).resolve())
    shown_figure = figure.relative_to(ROOT) if figure.is_relative_to(ROOT) else figure
    lines += ["", "### Real films against DRRs (`xwin eval domain`)", "",
              f"{g['n_real']} real frontal CXRs against {g['n_simulated']} PA DRRs ({len(volumes)} CTs, training and "
              "held-out, 16 each with a random isocenter shift and roll). Separability: AUROC of a linear probe "
              "telling "
              "real from simulated context embeddings, out-of-fold (0.5 = indistinguishable). Cosine: mean over "
              "real–simulated pairs, then within each domain. Identity: the decoded Δ = 0 prediction against its "
              f"input, PSNR (dB) / SSIM. Pictures: `{shown_figure}`.", "",
              "| encoder | separability AUROC | cosine real–sim | within real | within sim "
              "| identity real | identity sim |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, g in gaps.items():
        c, i = g["cosine"], g["identity"]
        lines.append(f"| {name} | {g['separability_auroc']:.3f} | {c['real_vs_simulated']:.3f} | "
                     f"{c['within_real']:.3f} | {c['within_simulated']:.3f} | "
                     f"{i['real']['psnr']:.2f} / {i['real']['ssim']:.3f} | "
                     f"{i['simulated']['psnr']:.2f} / {i['simulated']['ssim']:.3f} |")
    lines += ["", f"_Generated in {time.time() - t0:.0f} s on {torch.get_num_threads()} CPU threads._"]
    text = "\n".join(lines)
    print(text)
    write_section(Path(ns.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
