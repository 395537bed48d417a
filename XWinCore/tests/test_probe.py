"""`xwin eval probe`: tasks decided within a source, the patient bootstrap, a visible feature against a random label,
and the transductive flag (tiny synthetic films and a tiny random encoder: seconds on a CPU)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xwin.cli import main
from xwin.config import DataConfig, ModelConfig, XWinConfig
from xwin.errors import XWinInputError
from xwin.eval.probe import (
    TASKS,
    ProbeTask,
    bootstrap_ci,
    is_transductive,
    patient_bootstrap,
    probe,
    read_rows,
    source_auroc,
    task_set,
)
from xwin.models import create_model

torch.set_num_threads(1)  # tiny tensors: one thread is as fast and leaves the other core alone

TINY = dict(embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=8, predictor_depth=1, predictor_width=32,
            predictor_heads=2, mask_predictor_depth=1, mask_predictor_width=32, mask_predictor_heads=2,
            decoder_depth=1, decoder_width=32, decoder_heads=2, domain_hidden=16)
COLUMNS = ("filename", "source", "view", "finding", "sex", "age", "patient_id", "license")


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    return path


def _film(path: Path, rng: np.random.Generator, bright: bool) -> None:
    """A 40² grey film with a bright square: large (about half the film) when ``bright``, else small."""
    img = rng.normal(0.3, 0.05, (40, 40))
    side = 28 if bright else 10
    top, left = rng.integers(0, 40 - side, 2)
    img[top:top + side, left:left + side] += 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)


def _tiny_config(cxr: tuple[str, ...] = ()) -> XWinConfig:
    return XWinConfig(model=ModelConfig(**TINY), data=DataConfig(cxr=cxr))


# ---------------------------------------------------------------- (a) the task definitions exclude the confound

def _confounded_rows(seed: int = 0) -> list[dict]:
    """Two large confound sources whose every label is fixed (the source alone predicts sex, view and finding over
    the whole CSV), and the tasks' sources, where each label is balanced at random."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(30):
        rows.append(dict(filename=f"ward/{i}.png", source="Adult ward archive", view="PA",
                         finding="Pneumonia (bacterial)", sex="M", patient_id=f"w{i}"))
        rows.append(dict(filename=f"kids/{i}.png", source="Children's clinic", view="AP", finding="Normal",
                         sex="F", patient_id=f"k{i}"))

    def balanced(n, a, b):
        return list(rng.permutation([a] * (n // 2) + [b] * (n // 2)))

    for i, (sex, view) in enumerate(zip(balanced(12, "M", "F"), balanced(12, "PA", "AP"))):
        rows.append(dict(filename=f"mhh/{i}.png", source="MHH Hannover COVID-19 image repository", view=view,
                         finding="COVID-19", sex=sex, patient_id=f"m{i // 2}"))
    rows.append(dict(filename="mhh/lateral.png", source="MHH Hannover COVID-19 image repository", view="LL",
                     finding="COVID-19", sex="", patient_id="m99"))  # no sex, lateral view: in no task
    for i, sex in enumerate(balanced(4, "M", "F")):
        rows.append(dict(filename=f"nih/{i}.png", source="NIH ChestX-ray14 via somewhere", view="PA",
                         finding="No Finding", sex=sex, patient_id=f"n{i}"))
    for i, finding in enumerate(balanced(8, "Pneumonia (viral)", "Normal")):
        rows.append(dict(filename=f"kermany/{i}.png", source="Kermany et al. pediatric CXR", view="AP",
                         finding=finding))  # no patient id: each film is its own patient
    rows.append(dict(filename="kermany/other.png", source="Kermany et al. pediatric CXR", view="AP",
                     finding="Effusion"))  # neither pneumonia nor normal: dropped
    return rows


def test_tasks_keep_only_their_sources_so_the_source_predicts_nothing(tmp_path):
    rows = _confounded_rows()
    for r in rows:
        (tmp_path / r["filename"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / r["filename"]).touch()  # task_set checks that the files exist, nothing reads them here
    path = _write_csv(tmp_path / "labels.csv", rows)
    rows = read_rows(path)
    # over the whole CSV the label is (nearly) a function of the source: the old probe's confound
    for column, positive in (("sex", "^M$"), ("view", "^PA$"), ("finding", "(?i)pneumonia")):
        naive = task_set(rows, ProbeTask("naive", (), column, positive), tmp_path, path)
        assert source_auroc(naive.labels, naive.sources) > 0.85, column
    expected = {"sex": {f"mhh/{i}.png" for i in range(12)} | {f"nih/{i}.png" for i in range(4)},
                "view": {f"mhh/{i}.png" for i in range(12)},
                "pneumonia": {f"kermany/{i}.png" for i in range(8)}}
    assert set(TASKS) == set(expected)
    for name, task in TASKS.items():
        s = task_set(rows, task, tmp_path, path)
        assert {str(f.relative_to(tmp_path)) for f in s.files} == expected[name], name
        assert source_auroc(s.labels, s.sources) == 0.5, name
        assert s.labels.sum() == len(s.labels) // 2
        truth = {"sex": lambda r: r["sex"] == "M", "view": lambda r: r["view"] == "PA",
                 "pneumonia": lambda r: r["finding"] == "Pneumonia (viral)"}[name]
        by_name = {r["filename"]: r for r in rows}
        assert [bool(v) for v in s.labels] == [truth(by_name[str(f.relative_to(tmp_path))]) for f in s.files]
    assert len(set(task_set(rows, TASKS["sex"], tmp_path, path).patients)) == 6 + 4  # MHH films: 2 per patient
    pneumonia = task_set(rows, TASKS["pneumonia"], tmp_path, path)
    assert len(set(pneumonia.patients)) == 8  # rows without a patient id are their own patient


# ---------------------------------------------------------------- (b) the bootstrap resamples patients

def test_patient_bootstrap_draws_all_images_of_a_patient_together():
    patients = np.array(["a", "a", "b", "c", "c", "c", "d", "e"])
    rng = np.random.default_rng(0)
    drawn_a = []
    for _ in range(300):
        idx = patient_bootstrap(patients, rng)
        counts = np.bincount(idx, minlength=len(patients))
        assert counts[0] == counts[1]  # both images of patient a, or neither
        assert counts[3] == counts[4] == counts[5]
        units = counts[0] + counts[2] + counts[3] + counts[6] + counts[7]  # patients drawn (a, b, c, d, e)
        assert units == 5
        drawn_a.append(counts[0])
    assert 0 in drawn_a and max(drawn_a) >= 2  # sometimes left out, sometimes drawn twice


def test_bootstrap_interval_is_over_patients_not_images():
    """Each patient's film duplicated: resampling patients gives exactly the interval of the single films, while
    resampling images would count every film twice as evidence and narrow it."""
    rng = np.random.default_rng(1)
    labels = np.arange(30) % 2 == 0
    scores = labels + rng.normal(0, 1.0, 30)
    twice = np.repeat(np.arange(30), 2)
    by_patient = bootstrap_ci(labels[twice], scores[twice], twice, n=300, seed=3)
    assert by_patient == bootstrap_ci(labels, scores, None, n=300, seed=3)
    by_image = bootstrap_ci(labels[twice], scores[twice], None, n=300, seed=3)
    assert by_image[1] - by_image[0] < by_patient[1] - by_patient[0]


# ---------------------------------------------------------------- (c) a visible feature probes, a random label does not

def test_visible_feature_probes_high_and_random_label_near_chance(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    coins = rng.permutation([True, False] * 10)
    for p in range(20):
        bright = p % 2 == 0
        for j in range(2):
            name = f"films/{p}_{j}.png"
            _film(tmp_path / name, rng, bright)
            rows.append(dict(filename=name, source="Lab", view="PA" if coins[p] else "AP",
                             finding="bright" if bright else "dark", patient_id=f"p{p}"))
    path = _write_csv(tmp_path / "labels.csv", rows)
    table = read_rows(path)
    sets = [task_set(table, ProbeTask("bright", ("Lab",), "finding", "^bright$", "^dark$"), tmp_path, path),
            task_set(table, ProbeTask("coin", ("Lab",), "view", "^PA$", "^AP$"), tmp_path, path)]
    torch.manual_seed(0)
    encoder = create_model(_tiny_config()).context_encoder
    result = probe({"random_init": encoder}, sets, size=32, folds=4, shots=(2,), seed=0, seen={"random_init": ()},
                   resamples=200)
    bright, coin = result["tasks"]["bright"], result["tasks"]["coin"]
    for t in (bright, coin):
        assert (t["n_images"], t["n_patients"], t["n_positive"]) == (40, 20, 20)
        assert t["source_auroc"] == 0.5
        r = t["encoders"]["random_init"]
        assert r["transductive"] is False and set(r) == {"transductive", "linear", "2_shot"}
        assert r["linear"]["ci95"][0] <= r["linear"]["auroc"] <= r["linear"]["ci95"][1]
    assert bright["encoders"]["random_init"]["linear"]["auroc"] > 0.9
    assert abs(coin["encoders"]["random_init"]["linear"]["auroc"] - 0.5) < 0.25
    assert result["encoders"]["random_init"] == {"transductive": False, "training_cxr": []}


# ---------------------------------------------------------------- (d) transductive: films seen in training

def test_transductive_when_probe_films_lie_under_the_training_cxr_folders(tmp_path, monkeypatch):
    train = tmp_path / "data" / "cxr"
    film = train / "sub" / "a.png"
    elsewhere = tmp_path / "other" / "a.png"
    assert is_transductive([film], [str(train)]) is True
    assert is_transductive([elsewhere, film], [str(tmp_path / "x"), str(train)]) is True
    assert is_transductive([elsewhere], [str(train)]) is False
    assert is_transductive([tmp_path / "data" / "cxr2" / "a.png"], [str(train)]) is False  # a prefix, not a parent
    assert is_transductive([film], []) is False and is_transductive([film], None) is None
    # relative folders (as in a config) and files resolve against the working directory
    assert is_transductive([film], ["../data/cxr"], cwd=tmp_path / "repo") is True
    assert is_transductive(["../data/cxr/sub/a.png"], [str(train)], cwd=tmp_path / "repo") is True
    assert is_transductive([film], ["data/cxr"], cwd=tmp_path / "repo") is False


def _model_file(path: Path, cxr: tuple[str, ...]) -> Path:
    """An exported model file (random weights) whose config trained on the real-CXR folders ``cxr``."""
    from safetensors.torch import save_file

    from xwin.models.model_file import MODEL_FORMAT
    from xwin.predict import INFERENCE_MODULES
    cfg = _tiny_config(cxr)
    torch.manual_seed(1)
    weights = {k: v.contiguous() for k, v in create_model(cfg).state_dict().items() if k.startswith(INFERENCE_MODULES)}
    save_file(weights, str(path), metadata={"format": MODEL_FORMAT, "config": json.dumps(cfg.to_dict()), "step": "0"})
    return path


def test_cli_probe_marks_the_model_transductive_on_its_training_films(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    model = _model_file(tmp_path / "model.safetensors", ("../shared/cxr",))  # relative to the working directory
    rng = np.random.default_rng(0)
    rows = [dict(filename=f"f{i}.png", source="Lab", finding="bright" if i % 2 else "dark", patient_id=f"p{i // 2}")
            for i in range(12)]
    for folder in (tmp_path / "shared" / "cxr" / "lab", tmp_path / "elsewhere"):
        for r in rows:
            _film(folder / r["filename"], rng, r["finding"] == "bright")
        _write_csv(folder / "labels.csv", rows)
    args = ["eval", "probe", "--checkpoint", str(model), "--ablation", f"mim_only={model}", "--positive", "^bright$",
            "--source", "Lab", "--folds", "2", "--shots", "0", "--resamples", "20"]
    flags = {}
    for place in ("shared/cxr/lab", "elsewhere"):
        folder = tmp_path / place
        assert main(args + ["--labels", str(folder / "labels.csv"), "--images", str(folder), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        task = result["tasks"]["custom"]
        assert (task["n_images"], task["n_patients"], task["n_positive"]) == (12, 6, 6)
        assert set(task["encoders"]) == {"model", "random_init", "mim_only"}
        flags[place] = {name: r["transductive"] for name, r in task["encoders"].items()}
        assert {n: e["transductive"] for n, e in result["encoders"].items()} == flags[place]
    assert flags["shared/cxr/lab"] == {"model": True, "random_init": False, "mim_only": True}
    assert flags["elsewhere"] == {"model": False, "random_init": False, "mim_only": False}
    folder = tmp_path / "elsewhere"
    assert main(args + ["--labels", str(folder / "labels.csv"), "--images", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "transductive" in table and "custom" in table and "random_init" in table and "source-only AUROC" in table
    assert main(["eval", "probe", "--labels", str(folder / "labels.csv"), "--images", str(folder),
                 "--checkpoint", str(model), "--task", "height"]) == 2
    assert "--task 'height': unknown probe task" in capsys.readouterr().err
    # campaign 7: more folds than patients ran the patients' number silently; k-shot beyond the films a training
    # fold holds reported fewer shots as k; a trillion bootstrap resamples ran until killed
    mine = args[:-6] + ["--labels", str(folder / "labels.csv"), "--images", str(folder), "--json"]
    assert main(mine + ["--folds", "1000", "--shots", "0", "--resamples", "20"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["folds"] == 1000 and result["tasks"]["custom"]["folds"] == 6  # one patient per fold
    for extra, message in ((["--folds", "2", "--shots", "4", "--resamples", "20"],
                            "--shots 4: task custom has 3 positive or negative film(s) in its smallest training fold"),
                           (["--resamples", "1000000000000"], "--resamples 1 to 100000")):
        assert main(mine + extra) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("positive, negative, option", [("(", None, "--positive"), ("yes", "[a-", "--negative")])
def test_task_with_a_broken_regex_is_refused_by_option(positive, negative, option):
    """`xwin eval probe --positive '('` was a traceback from re (bad-input campaign 4)."""
    with pytest.raises(XWinInputError, match=f"^{option} .* is not a regular expression"):
        ProbeTask("t", (), "finding", positive, negative)


@pytest.mark.parametrize("args, message", [(["--where", "sex"], "--where 'sex': expected COLUMN=VALUE"),
                                           (["--ablation", "x"], "--ablation 'x': expected NAME=PATH"),
                                           (["--ablation", "=model.safetensors"], "--ablation '=model.safetensors'"),
                                           # campaign 8: the second of two names silently replaced the first
                                           (["--ablation", "a=m.safetensors", "--ablation", "a=m2.safetensors"],
                                            "--ablation 'a' is given twice"),
                                           (["--ablation", "model=m.safetensors"], "--ablation 'model' is given twice"),
                                           (["--where", "sex=M", "--where", "sex=F"], "--where 'sex' is given twice")])
def test_a_where_or_ablation_without_its_name_is_refused_by_option(tmp_path, capsys, args, message):
    """`--where sex` said "expected NAME=VALUE" without naming the option (bad-input campaign 4)."""
    assert main(["eval", "probe", "--labels", str(tmp_path / "labels.csv"), "--images", str(tmp_path),
                 "--checkpoint", str(tmp_path / "model.safetensors")] + args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_labels_csv_naming_a_column_twice_is_refused(tmp_path):
    """Which of two 'pneumonia' columns would label the films is a guess: refused, naming the file and the column."""
    path = tmp_path / "labels.csv"
    path.write_text("filename,source,pneumonia,pneumonia\na.png,nih,1,0\n")
    with pytest.raises(XWinInputError, match=r"labels\.csv: the labels CSV names the column 'pneumonia' twice"):
        read_rows(path)


@pytest.mark.parametrize("args, message", [
    (["--where", "sex="], "labels.csv: --where sex='' keeps no row of the labels CSV"),
    (["--column", "sex", "--positive", ".*"],
     "labels.csv: task custom (--column sex --positive '.*') needs positives and negatives: of 2 rows it kept 2 "
     "positive and 0 negative"),
])
def test_filters_that_leave_no_task_name_themselves(tmp_path, capsys, args, message):
    """Campaign 6: a --where that keeps no row, or a --positive that matches every row, was refused naming only the
    labels CSV ("kept 0 positive and 0 negative rows")."""
    (tmp_path / "labels.csv").write_text("filename,source,sex\na.png,MHH,M\nb.png,MHH,F\n")
    assert main(["eval", "probe", "--labels", str(tmp_path / "labels.csv"), "--images", str(tmp_path),
                 "--checkpoint", str(tmp_path / "model.safetensors")] + args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
