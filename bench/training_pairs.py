"""Contact sheet of world-model training pairs, as the sampler draws them from a DRR bank (docs/model.md, data).

    .venv/bin/python bench/training_pairs.py --run runs/v2 [--pairs 12] [--out docs/screenshots/training_pairs.png]

Columns are pairs: the context view (top row) and its target (bottom row), labelled with the context pose and the
action (Δlao, Δcran in degrees); augmentation (noise, blur) and zoom as in training, real films left out.
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="training run folder (its bank/ and a checkpoint's config)")
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs/screenshots/training_pairs.png"))
    ns = ap.parse_args(argv)
    from xwin.config import XWinConfig
    from xwin.data import PairSampler, load_bank
    from xwin.demo import save_contact_sheet
    from xwin.models.model_file import latest_checkpoint, load_checkpoint

    cfg = XWinConfig.from_dict(load_checkpoint(latest_checkpoint(Path(ns.run)))[2]["config"])
    d = cfg.data
    sampler = PairSampler(load_bank(Path(ns.run) / "bank"), seed=ns.seed, pa_fraction=d.pa_fraction,
                          pairs_per_instance=1, zoom=d.zoom, context_cran0_fraction=d.context_cran0_fraction,
                          target_cran0_fraction=d.target_cran0_fraction)
    b = sampler.sample(ns.pairs)
    frames = [x[0].numpy() for x in b["context"]] + [x[0].numpy() for x in b["target"]]
    labels = [f"ctx {p[0]:+.0f}/{p[1]:+.0f}" for p in b["pose"].tolist()]
    labels += [f"Δ {a:+.0f}/{c:+.0f}" for a, c in zip(b["d_lao"].tolist(), b["d_cran"].tolist())]
    out = save_contact_sheet(frames, labels, Path(ns.out), "Training pairs (cpu_small): context (top, LAO/CRAN °) → "
                             "target (bottom, action Δlao/Δcran °)", cols=ns.pairs)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
