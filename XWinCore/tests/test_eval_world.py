"""`xwin eval world`: jittered renderings, retrieval and angle scores, 128² scoring, baselines, bootstrap, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from xwin.cli import main
from xwin.config import XWinConfig
from xwin.data import bank_spec
from xwin.data.bank import prepared_ct
from xwin.eval import world
from xwin.eval.world import (
    BASELINES,
    KEYS,
    TARGET_LAO,
    bootstrap_ci,
    evaluate_world,
    latent_scores,
    per_angle,
    per_image_scores,
    render_units,
    retrieval,
    summarize,
    to_score_size,
)
from xwin.io import write_volume
from xwin.io.image import Volume
from xwin.models import create_model
from xwin.models.model_file import MODEL_FORMAT
from xwin.predict import LoadedModel

TINY = {
    "model": {"encoder": "tiny", "embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32,
              "predictor_depth": 1, "predictor_width": 32, "predictor_heads": 2, "mask_predictor_depth": 1,
              "mask_predictor_width": 32, "mask_predictor_heads": 2, "decoder_depth": 1, "decoder_width": 32,
              "decoder_heads": 2, "domain_hidden": 16},
    "data": {"lao": [-30.0, 0.0, 30.0], "cran": [0.0], "spacing_mm": 5.0, "sid": 400.0, "sdd": 600.0,
             "field_mm": 200.0},
}


def _config(**data) -> XWinConfig:
    cfg = json.loads(json.dumps(TINY))
    cfg["data"].update(data)
    return XWinConfig.from_dict(cfg)


def _loaded(**data) -> LoadedModel:
    torch.manual_seed(1)
    return LoadedModel(create_model(_config(**data)).eval(), _config(**data))


def _chest(shift: float, scale: float) -> Volume:
    """A small synthetic chest (3 mm voxels): body ellipsoid, two air lungs, a dense spine, off-centre heart."""
    n = 32
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32)] * 3, indexing="ij")
    x, y, z = (i - 15.5) * 3.0, (j - 15.5) * 3.0, (k - 15.5) * 3.0
    hu = np.full((n, n, n), -1000.0, np.float32)
    hu[(x / (40 * scale)) ** 2 + (y / 30) ** 2 + (z / 45) ** 2 < 1] = 30.0
    for side in (-1, 1):
        hu[((x - side * 18 * scale) / 12) ** 2 + ((y + shift) / 16) ** 2 + (z / 30) ** 2 < 1] = -850.0
    hu[(x + 8) ** 2 + (y + 5) ** 2 + (z + 5) ** 2 < 100] = 60.0
    hu[(x ** 2 + (y - 18) ** 2 < 36)] = 700.0
    return Volume(hu, (3.0, 3.0, 3.0), (-46.5, -46.5, -46.5))


@pytest.fixture(scope="module")
def chests(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    paths = []
    for n, (shift, scale) in enumerate([(0.0, 1.0), (6.0, 0.8), (-5.0, 1.2)]):
        paths.append(str(root / f"chest{n}.nrrd"))
        write_volume(_chest(shift, scale), paths[-1])
    return paths


def test_json_keys_per_angle_and_renderings_through_the_cli(chests, tmp_path, capsys):
    cfg = _config()
    torch.manual_seed(0)
    model = create_model(cfg)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    model_file = tmp_path / "tiny.safetensors"
    save_file(tensors, str(model_file), metadata={"format": MODEL_FORMAT, "config": json.dumps(cfg.to_dict()),
                                                  "step": "0"})
    assert main(["eval", "world", "--ct", chests[2], "--renderings", "2", "--checkpoint", str(model_file),
                 "--train-ct", chests[0], "--train-ct", chests[1], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"model", "baselines", "decoder_ceiling", "per_angle", "per_ct", "renderings", "score_size"}
    assert set(result["decoder_ceiling"]) == {"psnr", "ssim"} and 0 < result["decoder_ceiling"]["ssim"] <= 1
    assert (result["renderings"], result["score_size"]) == (2, 128)
    assert set(result["model"]) == set(KEYS) and set(result["baselines"]) == set(BASELINES)
    assert set(result["baselines"]["mean_projection"]) == set(KEYS) | {"note"}  # the file holds no mean projection
    assert all(v is None for k, v in result["baselines"]["mean_projection"].items() if k != "note")
    for name in ("copy_context", "random_init", "nearest_training_patient"):
        assert set(result["baselines"][name]) == set(KEYS)
    copy = result["baselines"]["copy_context"]
    assert copy["retrieval_top1"] is None and copy["within_15"] is None and copy["angular_error_deg"] is None
    assert copy["psnr"] > 0 and copy["effective_rank"] >= 1
    m = result["model"]
    assert 0 <= m["retrieval_ci"][0] <= m["retrieval_top1"] <= m["retrieval_ci"][1] <= 1
    assert 0 <= m["angular_error_deg"] <= 180 and 0 <= m["ssim"] <= 1
    assert [row["lao"] for row in result["per_angle"]] == list(TARGET_LAO)
    assert all(set(row) == {"lao", "model", *BASELINES, "decoder_ceiling"} for row in result["per_angle"])
    assert result["per_angle"][0]["model"]["psnr"] > 0
    (ct,) = result["per_ct"]
    assert ct["ct"] == chests[2] and set(ct["model"]) == set(KEYS) and set(ct["baselines"]) == set(BASELINES)
    assert ct["nearest_training_ct"][0] in chests[:2] and len(ct["nearest_training_ct"]) == 2
    assert main(["eval", "world", "--checkpoint", str(model_file)]) == 2  # no CT given
    cases = tmp_path / "cases.csv"
    cases.write_text(f"file,split\n{chests[0]},train\n{chests[2]},eval\n")
    assert main(["eval", "world", "--cases", str(cases), "--renderings", "1", "--checkpoint", str(model_file),
                 "--train-ct", chests[0]]) == 0
    table = capsys.readouterr().out
    assert "nearest_training_patient" in table and "per target angle" in table


def test_retrieval_oracle_and_one_step_off():
    torch.manual_seed(0)
    true = torch.randn(13, 64)
    assert latent_scores(true.clone(), true) == {"retrieval_top1": 1.0, "within_15": 1.0, "angular_error_deg": 0.0}
    shifted = torch.cat([true[1:], true[-2:-1]])  # each prediction is the latent of the next angle (last: previous)
    assert latent_scores(shifted, true) == {"retrieval_top1": 0.0, "within_15": 1.0, "angular_error_deg": 15.0}
    flipped = true.flip(0)  # LAO a predicted as −a: right only at 0°
    scores = latent_scores(flipped, true)
    assert scores["retrieval_top1"] == pytest.approx(1 / 13)
    assert scores["angular_error_deg"] == pytest.approx(np.mean([abs(2 * a) for a in TARGET_LAO]))
    record = {"correct": np.ones(13, bool), "offset": np.zeros(13), "mse": np.zeros(13), "ssim": np.ones(13),
              "embed": true}
    pooled = summarize([record, record])
    assert pooled["retrieval_top1"] == 1.0 and pooled["retrieval_ci"] == [1.0, 1.0] and pooled["ssim"] == 1.0
    assert pooled["psnr"] == 100.0  # an exact prediction: the floored MSE


def test_per_angle_retrieval_offset_is_signed():
    """A model that shrinks every rotation one step toward PA: offset −15° on the LAO side, +15° on the RAO side, 0
    at PA; a second unit that is exact halves the offsets and gives top-1 0.5 off PA."""
    torch.manual_seed(0)
    true = torch.randn(13, 64)
    toward_pa = torch.stack([true[j + 1] if a < 0 else true[j - 1] if a > 0 else true[j]
                             for j, a in enumerate(TARGET_LAO)])
    correct, offset = retrieval(toward_pa, true)
    assert offset.tolist() == [15.0] * 6 + [0.0] + [-15.0] * 6

    def record(c, o):
        return {"correct": c, "offset": o, "mse": np.zeros(13), "ssim": np.ones(13), "embed": None}

    rows = per_angle({"model": [record(correct, offset), record(np.ones(13, bool), np.zeros(13))],
                      "copy_context": [record(None, None)], "mean_projection": None})
    assert [r["model"]["offset_deg"] for r in rows] == [7.5] * 6 + [0.0] + [-7.5] * 6
    assert [r["model"]["retrieval_top1"] for r in rows] == [0.5] * 6 + [1.0] + [0.5] * 6
    assert rows[0]["copy_context"] == {"psnr": 100.0, "ssim": 1.0, "retrieval_top1": None, "offset_deg": None}
    assert rows[0]["mean_projection"] == dict.fromkeys(("psnr", "ssim", "retrieval_top1", "offset_deg"))


def test_blur_does_not_pay_at_the_score_size(chests):
    spec = bank_spec(_config(iso_shift_mm=0.0, roll_deg=0.0, spacing_mm=3.0))
    assert spec.img_size == 32
    spec = type(spec)(**{**spec.__dict__, "img_size": 64})
    (unit,) = render_units(prepared_ct(chests[0], spec), spec, renderings=1)
    assert unit.targets.shape[-1] == 64 and unit.truth.shape[-1] == 128
    mse, ssim = per_image_scores(unit.truth, unit.truth)
    assert np.all(mse == 0) and np.allclose(ssim, 1.0)
    mse, ssim = per_image_scores(to_score_size(unit.targets), unit.truth)  # the model-size truth, upsampled
    assert np.all(mse > 0) and np.all(ssim < 0.999)
    # a model larger than the score size: its own truth, resampled to 128, scores 1.0
    big = type(spec)(**{**spec.__dict__, "img_size": 160})
    (unit,) = render_units(prepared_ct(chests[0], big), big, renderings=1)
    assert unit.truth.shape[-1] == 128
    torch.testing.assert_close(unit.truth, to_score_size(unit.targets))


def test_jittered_renderings_differ_and_repeat_with_the_seed(chests):
    spec = bank_spec(_config())
    assert (spec.iso_shift_mm, spec.roll_deg) == (10.0, 3.0)  # the training jitter
    volume = prepared_ct(chests[0], spec)
    first = render_units(volume, spec, renderings=2, seed=3, score_size=32)
    again = render_units(volume, spec, renderings=2, seed=3, score_size=32)
    other = render_units(volume, spec, renderings=2, seed=4, score_size=32)
    assert not torch.allclose(first[0].context, first[1].context)
    assert not torch.allclose(first[0].targets, first[1].targets)
    for a, b in zip(first, again):
        assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not torch.allclose(first[0].targets, other[0].targets)
    # context and targets share the jitter: the unjittered LAO 0 target is the context, the jittered one too
    torch.testing.assert_close(first[0].context[0], first[0].targets[TARGET_LAO.index(0.0)])
    roll, shift = world.jitters(spec, 2, seed=3)[1]
    assert roll != 0.0 and np.all(shift != 0.0)


def test_nearest_training_patient_finds_the_ct_itself(chests):
    loaded = _loaded(iso_shift_mm=0.0, roll_deg=0.0)
    result = evaluate_world(loaded, [chests[1]], renderings=1, train_cts=chests, score_size=32)
    (ct,) = result["per_ct"]
    assert ct["nearest_training_ct"] == [chests[1]]
    near = result["baselines"]["nearest_training_patient"]
    assert near["retrieval_top1"] == 1.0 and near["angular_error_deg"] == 0.0 and near["ssim"] == 1.0
    assert all(row["nearest_training_patient"]["ssim"] == 1.0 for row in result["per_angle"])
    # without training CTs (the tiny config names none): nulls and a note
    none = evaluate_world(loaded, [chests[1]], renderings=1, score_size=32)
    assert none["baselines"]["nearest_training_patient"]["psnr"] is None
    assert "training" in none["baselines"]["nearest_training_patient"]["note"]


def test_bootstrap_interval():
    rng = np.random.default_rng(0)
    values = rng.random(20)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi and bootstrap_ci(values) == [lo, hi]
    assert bootstrap_ci(np.full(7, 0.3)) == pytest.approx([0.3, 0.3])


def test_paired_difference_of_known_records():
    """Per-unit differences and their paired bootstrap: hits of 13 views, errors in degrees, SSIM."""
    def record(hits: int, error: float, ssim: float) -> dict:
        correct = np.arange(13) < hits
        return {"correct": correct, "offset": np.where(correct, 0.0, error), "ssim": np.full(13, ssim)}

    model = [record(13, 15.0, 0.8), record(13, 15.0, 0.8), record(0, 15.0, 0.8), record(13, 15.0, 0.8)]
    versus = [record(0, 15.0, 0.7), record(13, 15.0, 0.7), record(0, 15.0, 0.7), record(0, 30.0, 0.7)]
    d = world.paired_difference(model, versus)
    assert d["retrieval_top1"] == pytest.approx(0.5)  # per unit: +1, 0, 0, +1
    assert d["angular_error_deg"] == pytest.approx((-15.0 + 0.0 + 0.0 - 30.0) / 4)
    assert d["ssim"] == pytest.approx(0.1) and d["ssim_ci"] == pytest.approx([0.1, 0.1])
    lo, hi = d["retrieval_top1_ci"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0


def test_versus_scores_a_second_model_on_the_same_renderings(chests, capsys):
    loaded, other = _loaded(), _loaded()
    torch.manual_seed(5)
    other = LoadedModel(create_model(other.config).eval(), other.config)  # other weights, same spec
    same = evaluate_world(loaded, [chests[1]], renderings=2, score_size=32, versus=_loaded())
    assert same["versus"]["difference"] == {"retrieval_top1": 0.0, "retrieval_top1_ci": [0.0, 0.0],
                                            "angular_error_deg": 0.0, "angular_error_deg_ci": [0.0, 0.0],
                                            "ssim": 0.0, "ssim_ci": [0.0, 0.0]}
    result = evaluate_world(loaded, [chests[1], chests[2]], renderings=2, score_size=32, versus=other)
    alone = evaluate_world(other, [chests[1], chests[2]], renderings=2, score_size=32)
    assert {k: result["versus"][k] for k in KEYS} == alone["model"]  # the other model, scored as if alone
    d = result["versus"]["difference"]
    assert d["retrieval_top1"] == pytest.approx(result["model"]["retrieval_top1"] - alone["model"]["retrieval_top1"],
                                                abs=2e-4)
    assert d["ssim"] == pytest.approx(result["model"]["ssim"] - alone["model"]["ssim"], abs=2e-4)
    assert d["retrieval_top1_ci"][0] <= d["retrieval_top1"] <= d["retrieval_top1_ci"][1]
    assert all("versus" in ct for ct in result["per_ct"])
    print(world.format_table(result))
    assert "model − versus on the same renderings" in capsys.readouterr().out
    with pytest.raises(world.XWinInputError, match=r"--versus: .*field_mm 200.0 vs 300.0"):
        evaluate_world(loaded, [chests[1]], renderings=1, score_size=32, versus=_loaded(field_mm=300.0))
