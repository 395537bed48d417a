"""A generated corpus of bad model files, configs, resource requests, devices and outputs (issue 16), each through
the real CLI: exit status 2, exactly one stderr line naming the culprit, no traceback, nothing on stdout, no new
file, bounded time and memory. Bombs and budget cases also run in a subprocess under `resource` limits."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from safetensors.torch import save_file

from xwin.cli import main
from xwin.config import FREEZABLE, XWinConfig, load_config
from xwin.errors import XWinInputError
from xwin.models import create_model
from xwin.models.model_file import MODEL_FORMAT
from xwin.predict import INFERENCE_MODULES

SECONDS = 30  # CPU seconds per case (the goal; other jobs may share the cores), wall clock 10 times that
RSS_GROWTH = 1 << 30  # bytes a case may add to the process's peak memory
TINY = {"model": {"img_size": 32, "patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2,
                  "predictor_depth": 1, "predictor_width": 16, "predictor_heads": 2, "mask_predictor_depth": 1,
                  "mask_predictor_width": 16, "mask_predictor_heads": 2, "decoder_depth": 1, "decoder_width": 16,
                  "decoder_heads": 2, "domain_hidden": 8}}
BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9))
        + "data: {ct: *j}\n")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Good inputs beside the bad ones (outside each case's folder): a tiny model file, a CT, a CXR."""
    root = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    weights = {k: v.half().contiguous() for k, v in create_model(XWinConfig.from_dict(TINY)).state_dict().items()
               if k.startswith(INFERENCE_MODULES)}
    save_file(weights, str(root / "tiny.safetensors"), metadata=_meta(TINY))
    ct = sitk.GetImageFromArray(np.full((12, 14, 16), -500, np.int16))
    ct.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(ct, str(root / "ct.nrrd"))
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(root / "cxr.png")
    return {"model": root / "tiny.safetensors", "ct": root / "ct.nrrd", "cxr": root / "cxr.png"}


def _meta(config, **extra) -> dict[str, str]:
    return {"format": MODEL_FORMAT, "config": json.dumps(config), **extra}


def _weights(good: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(good))


def _model(path: Path, good: Path, change=None, meta: dict | None = None) -> Path:
    """A copy of the tiny model file with its tensors changed by ``change`` and/or other metadata."""
    tensors = _weights(good)
    if change:
        change(tensors)
    save_file(tensors, str(path), metadata=_meta(TINY) if meta is None else meta)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _truncated(path: Path, good: Path) -> Path:
    data = good.read_bytes()
    return _bytes(path, data[: len(data) // 2])


def _checkpoint(folder: Path, good: Path, state="ok", model: bytes | None = None) -> Path:
    """A checkpoint folder (model.safetensors + state.json) from the tiny model, with a bad part."""
    folder.mkdir()
    tensors = {k: v.float() for k, v in _weights(good).items()}
    save_file(tensors, str(folder / "model.safetensors"))
    if model is not None:
        (folder / "model.safetensors").write_bytes(model)
    text = json.dumps({"step": 3, "config": TINY}) if state == "ok" else state
    (folder / "state.json").write_text(text)
    return folder


def _named_twice(path: Path, good: Path) -> Path:
    """The tiny model file with its header's first tensor entry repeated (JSON with a duplicate key)."""
    data = good.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    text = json.dumps(header)[:-1] + ", " + json.dumps({name: header[name]})[1:]
    text += " " * (-len(text) % 8)
    return _bytes(path, len(text).to_bytes(8, "little") + text.encode() + data[8 + n :])


def _set(tensors, name, value):
    tensors[name] = value


def _yaml(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _model_yaml(**model) -> str:
    return json.dumps({"model": {**TINY["model"], **model}})


# --- model files: (id, make(case_dir, good_model) -> file, command(file, inputs, case_dir) -> argv) -------------

def _predict(model: Path, inputs, d: Path) -> list[str]:
    return ["predict", str(inputs["cxr"]), "--lao", "30", "--cran", "0", "--checkpoint", str(model),
            "--out", str(d / "pred.png")]


def _export_model(model: Path, inputs, d: Path) -> list[str]:
    return ["export-model", str(model), "--out", str(d / "exported.safetensors")]


def _train_init(model: Path, inputs, d: Path) -> list[str]:
    config = _yaml(d.parent / f"{d.name}_init.yaml", json.dumps({**TINY, "data": {"ct": [str(inputs["ct"])]}}))
    return ["train", "--config", str(config), "--init", str(model), "--out", str(d / "run")]


MODEL_CASES = [
    ("metadata_not_json", lambda d, g: _model(d / "m.safetensors", g, meta={"format": MODEL_FORMAT,
                                                                             "config": "{model: [1,"}), _predict),
    ("metadata_no_config", lambda d, g: _model(d / "m.safetensors", g, meta={"format": MODEL_FORMAT}), _predict),
    # campaign 12: a key given twice in the config JSON was read as the last value without a word
    ("config_key_twice", lambda d, g: _model(d / "m.safetensors", g, meta={
        "format": MODEL_FORMAT, "config": json.dumps(TINY)[:-1] + ', "model": ' + json.dumps(TINY["model"]) + "}"}),
     _predict),
    ("config_nested_deeper_than_the_stack", lambda d, g: _model(
        d / "m.safetensors", g, meta={"format": MODEL_FORMAT, "config": "[" * 100_000 + "]" * 100_000}), _predict),
    ("config_a_list", lambda d, g: _model(d / "m.safetensors", g, meta={"format": MODEL_FORMAT,
                                                                         "config": "[1, 2]"}), _predict),
    ("config_a_number", lambda d, g: _model(d / "m.safetensors", g, meta={"format": MODEL_FORMAT,
                                                                           "config": "42"}), _predict),
    ("config_unknown_section", lambda d, g: _model(d / "m.safetensors", g, meta=_meta({**TINY, "extra": {}})),
     _predict),
    ("config_heads_do_not_divide", lambda d, g: _model(
        d / "m.safetensors", g, meta=_meta({"model": {**TINY["model"], "num_heads": 3}})), _predict),
    ("config_huge_img_size", lambda d, g: _model(
        d / "m.safetensors", g, meta=_meta({"model": {**TINY["model"], "img_size": 1_600_000}})), _predict),
    ("config_huge_embed_dim", lambda d, g: _model(
        d / "m.safetensors", g, meta=_meta({"model": {**TINY["model"], "embed_dim": 10**8}})), _predict),
    ("config_int_beyond_int64", lambda d, g: _model(
        d / "m.safetensors", g, meta=_meta({"model": {**TINY["model"], "depth": 10**40}})), _predict),
    ("wrong_tensor_shape", lambda d, g: _model(
        d / "m.safetensors", g, lambda t: _set(t, "decoder.head.weight", torch.zeros(5, 5))), _predict),
    ("missing_tensors", lambda d, g: _model(
        d / "m.safetensors", g, lambda t: [t.pop(k) for k in list(t) if k.startswith("decoder.")]), _predict),
    ("foreign_tensor", lambda d, g: _model(
        d / "m.safetensors", g, lambda t: _set(t, "decoder.extra.weight", torch.zeros(3))), _predict),
    ("nan_weight", lambda d, g: _model(
        d / "m.safetensors", g, lambda t: t["decoder.head.weight"].view(-1).__setitem__(0, float("nan"))),
     _predict),
    ("mean_projection_wrong_size", lambda d, g: _model(
        d / "m.safetensors", g, lambda t: t.update({"mean_projection.images": torch.zeros(3, 8, 8),
                                                    "mean_projection.poses": torch.zeros(3, 2)})), _predict),
    ("pickle_named_safetensors", lambda d, g: (torch.save(_weights(g), d / "m.safetensors"),
                                               d / "m.safetensors")[1], _predict),
    ("random_bytes", lambda d, g: _bytes(d / "m.safetensors", np.random.default_rng(0).bytes(5000)), _predict),
    ("header_length_lie", lambda d, g: _bytes(d / "m.safetensors", (1 << 40).to_bytes(8, "little") + b"{}"),
     _predict),
    ("text_file", lambda d, g: _bytes(d / "m.safetensors", b"hello, I am a model\n"), _predict),
    ("empty_file", lambda d, g: _bytes(d / "m.safetensors", b""), _predict),
    ("truncated", lambda d, g: _truncated(d / "m.safetensors", g), _predict),
    ("no_format", lambda d, g: _model(d / "m.safetensors", g, meta={"config": json.dumps(TINY)}), _predict),
    ("other_format", lambda d, g: _model(d / "m.safetensors", g, meta={**_meta(TINY), "format": "other/9"}),
     _predict),
    ("fifo", lambda d, g: _fifo(d / "m.safetensors"), _predict),
    ("empty_folder", lambda d, g: (d / "ckpt").mkdir() or d / "ckpt", _predict),
    ("checkpoint_state_not_json", lambda d, g: _checkpoint(d / "ckpt", g, state="{step: "), _predict),
    ("checkpoint_state_a_list", lambda d, g: _checkpoint(d / "ckpt", g, state="[3]"), _predict),
    ("checkpoint_huge_config", lambda d, g: _checkpoint(
        d / "ckpt", g, state=json.dumps({"step": 3, "config": {"model": {**TINY["model"], "img_size": 160000}}})),
     _export_model),
    ("checkpoint_pickle_weights", lambda d, g: _checkpoint(
        d / "ckpt", g, model=b"\x80\x04\x95" + bytes(2000)), _export_model),
    ("checkpoint_no_config", lambda d, g: _checkpoint(d / "ckpt", g, state='{"step": 3}'), _export_model),
    ("train_init_not_json", lambda d, g: _model(d / "m.safetensors", g, meta={"format": MODEL_FORMAT,
                                                                               "config": "{"}), _train_init),
    ("train_init_random_bytes", lambda d, g: _bytes(d / "m.safetensors", np.random.default_rng(1).bytes(999)),
     _train_init),
    # integer or boolean tensors where the model has floats: cast without a word today
    ("weight_int8", lambda d, g: _model(d / "m.safetensors", g, lambda t: _set(
        t, "decoder.head.weight", t["decoder.head.weight"].to(torch.int8))), _predict),
    ("mean_projection_int16", lambda d, g: _model(d / "m.safetensors", g, lambda t: t.update(
        {"mean_projection.images": torch.zeros(3, 32, 32, dtype=torch.int16),
         "mean_projection.poses": torch.zeros(3, 2)})), _predict),
    ("tensor_named_twice", lambda d, g: _named_twice(d / "m.safetensors", g), _predict),
    ("weight_float8", lambda d, g: _model(d / "m.safetensors", g, lambda t: _set(
        t, "decoder.head.weight", t["decoder.head.weight"].float().to(torch.float8_e4m3fn))), _predict),
    ("train_init_weight_bool", lambda d, g: _model(d / "m.safetensors", g, lambda t: _set(
        t, "decoder.head.bias", t["decoder.head.bias"].bool())), _train_init),
]

# --- configs: (id, text of the YAML, name of the culprit file when it is not the config) -----------------------

CONFIG_CASES = [
    ("alias_bomb", BOMB),
    ("recursive_alias", "data: &a {ct: [*a]}\n"),
    ("integer_of_5000_digits", "train:\n  seed: " + "7" * 5000 + "\n"),
    ("integer_beyond_int64", "train:\n  seed: " + "9" * 40 + "\n"),
    ("integer_of_4000_digits_as_float", "loss:\n  tau: " + "9" * 4000 + "\n"),
    ("float_overflow", "loss:\n  tau: 1.0e+999\n"),
    ("non_utf8_bytes", b"model:\n  img_size: \xff\xfe\x00\x01\x80\n"),
    ("binary_tag", "data:\n  ct: !!binary aGVsbG8gd29ybGQ=\n"),
    ("nul_character", "model:\n  encoder: ti\x00ny\n"),
    ("python_tag", "data:\n  ct: !!python/object/apply:os.system ['echo owned']\n"),
    ("huge_ct_list", "data:\n  ct: [" + ", ".join(["ct_%06d.nii.gz" % i for i in range(20_000)]) + ", 17]\n"),
    ("path_of_100k_characters", "data:\n  ct: ['" + "a" * 100_000 + "']\n"),
    ("deep_nesting", "data: " + "[" * 20_000 + "]" * 20_000 + "\n"),
    ("two_documents", "model: {}\n---\nloss: {}\n"),
    ("top_level_list", "- model\n- loss\n"),
    ("unknown_section", "modle:\n  img_size: 64\n"),
    ("unknown_key", "model:\n  image_size: 64\n"),
    ("descending_pair", "mask:\n  target_scale: [0.3, 0.1]\n"),
    ("texts_for_a_pair", "data:\n  zoom: [b, a]\n"),
    ("pa_view_missing", "data:\n  lao: [15, 30]\n"),
    ("tab_indentation", "model:\n\timg_size: 64\n"),
    ("huge_img_size", _model_yaml(img_size=1_600_000)),
    ("huge_depth", _model_yaml(depth=10**9)),
    ("huge_widths", _model_yaml(predictor_width=4 * 10**6, predictor_heads=1)),
    ("empty_file", ""),
]


def _config_case(d: Path, text) -> Path:
    return _yaml(d / "bad.yaml", text)


SPECIAL_CONFIGS = [
    ("base_includes_itself", lambda d: _yaml(d / "bad.yaml", "base: bad.yaml\n"), "bad.yaml"),
    ("base_missing", lambda d: _yaml(d / "bad.yaml", "base: nowhere.yaml\n"), "nowhere.yaml"),
    ("base_is_a_bomb", lambda d: (_yaml(d / "bomb.yaml", BOMB), _yaml(d / "bad.yaml", "base: bomb.yaml\n"))[1],
     "bomb.yaml"),
    ("fifo", lambda d: _fifo(d / "bad.yaml"), "bad.yaml"),
    ("folder", lambda d: (d / "bad.yaml").mkdir() or d / "bad.yaml", "bad.yaml"),
    ("nine_mib_file", lambda d: _sparse(d / "bad.yaml", 9 << 20), "bad.yaml"),
    ("holdout_every_ct", lambda d: _data_yaml(d, holdout=["ct"]), "bad.yaml"),
    ("cases_csv_not_utf8", lambda d: _data_yaml(d, ct=[], cases=_cases(d, b"file,split\n\xff,train\n")), "cases.csv"),
    ("cases_csv_row_without_file", lambda d: _data_yaml(d, ct=[], cases=_cases(d, b"split,file\ntrain\n")),
     "cases.csv"),
    # campaign 2: PyYAML keeps the last of two equal keys without a word; a CT listed twice trained twice
    ("duplicate_section", lambda d: _edited(_data_yaml(d), '{"model"', '{"data": {"ct": []}, "model"'), "bad.yaml"),
    ("duplicate_key", lambda d: _edited(_data_yaml(d), '"img_size": 32', '"img_size": 32, "img_size": 64'),
     "bad.yaml"),
    ("cases_csv_same_ct_twice", lambda d: _data_yaml(d, ct=[], cases=_cases(d, b"file,split\nct.nrrd,train\n"
                                                                             b"./ct.nrrd,train\n")), "cases.csv"),
    # campaign 5's judgement call: a column named twice kept the last one without a word
    ("cases_csv_split_column_twice", lambda d: _data_yaml(d, ct=[], cases=_cases(d, b"file,split,split\n"
                                                                                 b"ct.nrrd,eval,train\n")),
     "cases.csv"),
    ("cases_csv_nul_in_a_file_name", lambda d: _data_yaml(d, ct=[], cases=_cases(d, b"file,split\nct\0.nrrd,train\n")),
     "cases.csv"),  # campaign 6: a ValueError traceback from os.stat
    ("cxr_folder_with_truncated_png", lambda d: _data_yaml(d, cxr=[str(_films(d / "films"))]), "b.png"),
    ("bank_is_a_file", lambda d: _data_yaml(d, bank=str(_bytes(d / "bank.txt", b"not a bank"))), "bank.txt"),
    # campaign 3: a FIFO named like a film was skipped (the folder read one film short)
    ("cxr_folder_with_fifo", lambda d: _data_yaml(d, cxr=[str(_with_fifo(d / "films", "a.png", "b.png"))]), "b.png"),
]


def _data_yaml(d: Path, **data) -> Path:
    """The tiny model's config with ``data`` (default: one CT file, whose contents the cases never reach)."""
    data.setdefault("ct", [str(_bytes(d / "ct.nrrd", b"never read"))])
    return _yaml(d / "bad.yaml", json.dumps({**TINY, "data": data}))


def _edited(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    return _yaml(path, text.replace(old, new, 1))


def _cases(d: Path, text: bytes) -> str:
    return str(_bytes(d / "cases.csv", text))


def _films(folder: Path) -> Path:
    """A folder of two PNG films of noise, the second cut in half."""
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / name)
    _bytes(folder / "b.png", (folder / "b.png").read_bytes()[:2000])
    return folder


def _with_fifo(folder: Path, good: str, fifo: str) -> Path:
    """A folder holding one sound file ``good`` (a film or a CT, by its name) and a FIFO named ``fifo``."""
    folder.mkdir()
    if good.endswith(".png"):
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / good)
    else:
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(folder / good))
    os.mkfifo(folder / fifo)
    return folder


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# --- the check -------------------------------------------------------------------------------------------------

def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _refused(argv: list[str], root: Path, culprit: str, capsys) -> str:
    """Run the CLI; assert the contract of issue 16 and return the error line."""
    before = _tree(root)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start, cpu = time.monotonic(), time.process_time()
    code = main(argv)
    seconds, cpu = time.monotonic() - start, time.process_time() - cpu
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and out == ""
    command = " ".join(argv[:2]) if argv[0] == "eval" else argv[0]  # "xwin eval world: error: ..."
    assert lines[0].startswith(f"xwin {command}: error: ") and culprit in lines[0], lines[0]
    assert len(lines[0]) <= 1100
    assert _tree(root) == before, "the failed run left files behind"
    assert cpu < SECONDS and seconds < 10 * SECONDS
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak < RSS_GROWTH
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def warm_imports():
    """Import what the commands import lazily, so that each case's time bound measures the case alone."""
    import xwin.drr
    import xwin.eval.domain
    import xwin.recon
    import xwin.train  # noqa: F401


@pytest.fixture
def case_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("XWIN_MAX_VOLUME_GB", raising=False)
    return folder


@pytest.mark.parametrize("make, command", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_bad_model_file(make, command, inputs, case_dir, capsys):
    model = make(case_dir, inputs["model"])
    _refused(command(model, inputs, case_dir), case_dir, str(model), capsys)


@pytest.mark.parametrize("text", [c[1] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(text, case_dir, capsys):
    config = _config_case(case_dir, text)
    line = _refused(["train", "--config", str(config), "--out", str(case_dir / "run")], case_dir, str(config),
                    capsys)
    assert "config" in line


@pytest.mark.parametrize("data, key", [
    ({"cxr": [""]}, "data.cxr[0]': an empty text"),  # campaign 6: "" was read as the working directory
    ({"field_mm": 1e9}, "data.field_mm': must be <= 2000"),  # campaign 6: blamed on the detector pixel
    # campaign 12: blamed on the detector pixel / on a CT of 1 x 1 x 1 voxels; a misspelt holdout and a view given
    # three times trained without a word
    ({"field_mm": 1e-30}, "data.field_mm': must be >= 1, got 1e-30"),
    ({"spacing_mm": 1e30}, "data.spacing_mm': must be <= 20, got 1e+30"),
    ({"lao": [0.0, 0.0, 0.0]}, "data.lao': lists 0 more than once: give each angle once"),
    ({"holdout": ["patient9"]}, "data.holdout': 'patient9' names no training CT"),
])
def test_bad_config_value_names_its_key(data, key, case_dir, capsys):
    config = _data_yaml(case_dir, **data)
    line = _refused(["train", "--config", str(config), "--out", str(case_dir / "run")], case_dir, str(config),
                    capsys)
    assert f"config key '{key}" in line


def test_a_blank_xwin_checkpoint_is_named(monkeypatch):
    """Campaign 12: XWIN_CHECKPOINT='   ' was taken for a file name (`error: : model not found`); an empty value means
    unset (the embedded model), as in a shell's `XWIN_CHECKPOINT= xwin predict ...`."""
    from xwin.predict import default_checkpoint

    monkeypatch.setenv("XWIN_CHECKPOINT", "   ")
    with pytest.raises(XWinInputError, match=r"XWIN_CHECKPOINT is blank \('   '\): name a model file"):
        default_checkpoint()
    monkeypatch.setenv("XWIN_CHECKPOINT", "")
    assert default_checkpoint().name == "xwin_default.safetensors"


@pytest.mark.parametrize("train, words", [
    ({"seed": 2**63 - 1}, "train.seed': must be <= 4294967295"),  # campaign 12: an overflow traceback at the start
    ({"freeze": list(FREEZABLE)}, "train.freeze': freezes every trained module"),  # 'empty parameter list' traceback
])
def test_bad_train_value_names_its_key(train, words, case_dir, capsys):
    config = _yaml(case_dir / "bad.yaml", json.dumps({**TINY, "train": {**TINY.get("train", {}), **train}}))
    line = _refused(["train", "--config", str(config), "--out", str(case_dir / "run")], case_dir, str(config),
                    capsys)
    assert f"config key '{words}" in line


@pytest.mark.parametrize("make, culprit", [c[1:] for c in SPECIAL_CONFIGS], ids=[c[0] for c in SPECIAL_CONFIGS])
def test_bad_config_file(make, culprit, case_dir, capsys):
    config = make(case_dir)
    _refused(["train", "--config", str(config), "--out", str(case_dir / "run")], case_dir, culprit, capsys)


def _truncated_ct(path: Path) -> Path:
    """A NIfTI CT whose header is sound and whose voxels are cut short: found only when the data is read."""
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20, 20), np.int16)), str(path))
    return _bytes(path, path.read_bytes()[:2000])


def test_bad_training_ct_is_named(case_dir, capsys):
    """A training CT found broken only when the DRR bank reads it: one line naming it (not MONAI's RuntimeError
    around the error), no run folder or bank left, and no progress bar under ``--progress none``."""
    ct = _truncated_ct(case_dir / "broken.nii")
    config = _yaml(case_dir / "bad.yaml", json.dumps({**TINY, "data": {"ct": [str(ct)]}}))
    line = _refused(["train", "--config", str(config), "--out", str(case_dir / "run"), "--progress", "none"],
                    case_dir, str(ct), capsys)
    assert "truncated" in line


def test_valid_descending_lists_and_pairs_are_accepted(tmp_path):
    """The `:g` bug: a 2-element list in descending order is a list (docs/model.md), not a [low, high] pair."""
    config = load_config(_yaml(tmp_path / "ok.yaml", "data:\n  lao: [15, 0]\n  cran: [0, -10]\n"
                                                     "  ct: [b.nii.gz, a.nii.gz]\n  zoom: [1, 1.5]\n"))
    assert config.data.lao == (15.0, 0.0) and config.data.cran == (0.0, -10.0)
    assert config.data.ct == ("b.nii.gz", "a.nii.gz")


# --- resource requests, devices and outputs: (id, argv(inputs, case_dir), culprit, environment) -----------------

def _reconstruct(inputs, d, *extra) -> list[str]:
    return ["reconstruct", "--from-ct", str(inputs["ct"]), "--out", str(d / "recon.nrrd"), *extra]


def _render(inputs, d, *extra, out="drr.nrrd") -> list[str]:
    return ["render", str(inputs["ct"]), "--lao", "0", "--cran", "0", "--out", str(d / out), *extra]


def _run_folder(d: Path) -> Path:
    """A run folder with a checkpoint step_0000002 (the export is refused before anything in it is read)."""
    ckpt = d / "run" / "checkpoints" / "step_0000002"
    ckpt.mkdir(parents=True)
    for name in ("model.safetensors", "state.json"):
        (ckpt / name).write_bytes(b"")
    return d / "run"


def _copy_into(file: Path, folder: Path) -> Path:
    folder.mkdir()
    return Path(shutil.copy(file, folder / file.name))


def _folder_holding(folder: Path, name: str) -> Path:
    folder.mkdir()
    (folder / name).write_text("the user's")
    return folder


def _bank_folder(d: Path) -> Path:
    """A run's DRR bank folder (RUN/bank) with its three files (nothing in it is read)."""
    bank = d / "run" / "bank"
    bank.mkdir(parents=True)
    for name in ("manifest.json", "images.npy", "poses.npy"):
        (bank / name).write_bytes(b"{}")
    return bank


def _distinct_poses(n_lao: int, n_cran: int) -> list[str]:
    """--lao … --cran … of n_lao × n_cran poses whose file names (0.01°) all differ."""
    lao, cran = np.meshgrid(np.linspace(-90, 90, n_lao), np.linspace(-15, 15, n_cran), indexing="ij")
    return ["--lao", *(f"{a:.2f}" for a in lao.ravel()), "--cran", *(f"{c:.2f}" for c in cran.ravel())]


def _existing_file(d: Path, name: str) -> str:
    (d / name).write_text("taken")
    return name


def _pose(d: Path, geometry: dict | None = None, matrix=None, **changes) -> Path:
    """A pose file as `xwin register` writes it (format, angles, isocenter, geometry, matrix), then changed."""
    from xwin.register import POSE_FORMAT, Pose

    detector = {"sid_mm": 400.0, "sdd_mm": 600.0, "height": 16, "width": 16, "pixel_mm": 4.0, **(geometry or {})}
    doc = {"format": POSE_FORMAT, "lao_deg": 10.0, "cran_deg": 5.0, "roll_deg": 0.0, "isocenter_lps_mm": [0, 0, 0],
           "geometry": detector,
           "matrix": Pose(10.0, 5.0, 0.0, (0.0, 0.0, 0.0)).matrix().tolist()}
    if matrix is not None:
        doc["matrix"] = matrix(np.array(doc["matrix"])).tolist()
    doc.update(changes)
    return _yaml(d / "pose.json", json.dumps(doc))


def _render_pose(inputs, d: Path, pose: Path) -> list[str]:
    return ["render", str(inputs["ct"]), "--pose", str(pose), "--out", str(d / "drr.nrrd")]


def _drr_of_mode(d: Path, mode: str) -> Path:
    """A 16 × 16 float DRR as `xwin render` writes it (SID, SDD, mode in the NRRD key/values)."""
    header = ("NRRD0004\ntype: float\ndimension: 2\nsizes: 16 16\nencoding: raw\nendian: little\nspacings: 2 2\n"
              f"xwin_sid_mm:=400\nxwin_sdd_mm:=600\nxwin_mode:={mode}\n\n")
    return _bytes(d / "drr.nrrd", header.encode() + np.random.default_rng(0).random(256).astype(np.float32).tobytes())


REQUEST_CASES = [
    # campaign 2: pose files read as if fine (numbers as texts, truncated sizes, a matrix that is not the angles' own
    # rotation, an isocenter 1e300 mm away, a detector of 4e10 pixels) and a DRR of an unknown mode (registered as a
    # radiograph, exit 3)
    ("pose_lao_a_text", lambda i, d: _render_pose(i, d, _pose(d, lao_deg="30")), "pose.json", {}),
    ("pose_height_fraction", lambda i, d: _render_pose(i, d, _pose(d, {"height": 16.7})), "pose.json", {}),
    ("pose_width_true", lambda i, d: _render_pose(i, d, _pose(d, {"width": True})), "pose.json", {}),
    ("pose_matrix_scaled", lambda i, d: _render_pose(i, d, _pose(d, matrix=lambda m: m * np.diag([2, 2, 2, 1]))),
     "pose.json", {}),
    ("pose_matrix_reflection", lambda i, d: _render_pose(i, d, _pose(d, matrix=lambda m: m @ np.diag([1, 1, -1, 1]))),
     "pose.json", {}),
    ("pose_matrix_of_other_angles", lambda i, d: _render_pose(i, d, _pose(d, lao_deg=40.0)), "pose.json", {}),
    ("pose_isocenter_1e300", lambda i, d: _render_pose(i, d, _pose(d, isocenter_lps_mm=[1e300, 0, 0])), "pose.json",
     {}),
    ("pose_detector_200000_squared", lambda i, d: _render_pose(i, d, _pose(d, {"height": 200000, "width": 200000})),
     "pose.json", {}),
    # campaign 4: a negative --seed was a numpy traceback
    ("eval_world_seed_negative", lambda i, d: ["eval", "world", "--ct", str(i["ct"]), "--seed", "-1", "--checkpoint",
                                               str(i["model"])], "--seed", {}),
    # campaign 4: an empty --out (an unset shell variable) wrote the DRRs into the current folder
    # campaign 5: a library check that names no file was printed without the option that set it
    ("render_sid_nan", lambda i, d: _render(i, d, "--sid", "nan"), "--sid: sid must be a positive number", {}),
    ("render_sid_beyond_sdd", lambda i, d: _render(i, d, "--sid", "2000", "--sdd", "1800"), "--sid/--sdd: SDD", {}),
    ("render_size_zero", lambda i, d: _render(i, d, "--size", "0", "0"), "--size: detector height", {}),
    ("render_mu_water_nan", lambda i, d: _render(i, d, "--mu-water", "nan"), "--mu-water: mu_water", {}),
    ("render_isocenter_nan", lambda i, d: _render(i, d, "--isocenter", "nan", "0", "0"), "--isocenter: isocenter", {}),
    ("reconstruct_iters_zero", lambda i, d: _reconstruct(i, d, "--method", "sart", "--iters", "0"), "--iters: ", {}),
    ("reconstruct_iters_1e9", lambda i, d: _reconstruct(i, d, "--method", "sart", "--iters", "1000000000"),
     "--iters: iterations must be an integer from 1 to 10000", {}),  # campaign 6: ran for hours
    ("reconstruct_tv_negative", lambda i, d: _reconstruct(i, d, "--method", "sart", "--tv", "-5"), "--tv: ", {}),
    ("reconstruct_spacing_zero", lambda i, d: _reconstruct(i, d, "--spacing", "0"), "--spacing: grid spacing", {}),
    ("reconstruct_det_zero", lambda i, d: _reconstruct(i, d, "--det", "0", "16"), "--det: detector height", {}),
    # campaign 9: a positive spacing or pixel below 0.1 µm was refused naming no option (--spacing) or the film
    ("reconstruct_spacing_1e-300", lambda i, d: _reconstruct(i, d, "--spacing", "1e-300"),
     "--spacing: grid spacing must lie between 0.0001 and 10000 mm", {}),
    ("register_pixel_1e-300", lambda i, d: ["register", str(i["ct"]), str(i["cxr"]), "--pixel", "1e-300", "--out",
                                            str(d / "pose.json")], "--pixel must lie between 0.0001 and 10000 mm", {}),
    ("export_segment_twice", lambda i, d: ["export", str(i["ct"]), "--out", str(d / "seg"), "--segment",
                                           "lungs,lungs"], "--segment: each segment", {}),
    ("register_pixel_zero", lambda i, d: ["register", str(i["ct"]), str(i["cxr"]), "--pixel", "0", "--out",
                                          str(d / "pose.json")], "--pixel must be a positive number", {}),
    ("register_sdd_nan", lambda i, d: ["register", str(i["ct"]), str(i["cxr"]), "--pixel", "2", "--sdd", "nan",
                                       "--out", str(d / "pose.json")], "--sdd must be a positive number", {}),
    # campaign 5: register --lao 500 ran and wrote a pose that render refuses; demo --step 0 / nan were tracebacks
    # and 0.0001 planned 1.8 million DRRs; eval world --seed 2^70 was a traceback from torch
    ("register_lao_500", lambda i, d: ["register", str(i["ct"]), str(i["cxr"]), "--pixel", "2", "--lao", "500",
                                       "--out", str(d / "pose.json")], "--lao must be a finite number of degrees", {}),
    ("demo_step_zero", lambda i, d: ["demo", "--step", "0", "--out", str(d / "demo")], "--step must be 1 to 180", {}),
    ("demo_step_nan", lambda i, d: ["demo", "--step", "nan", "--out", str(d / "demo")], "--step", {}),
    ("demo_step_tiny", lambda i, d: ["demo", "--step", "0.0001", "--out", str(d / "demo")], "--step", {}),
    ("eval_world_seed_2_70", lambda i, d: ["eval", "world", "--ct", str(i["ct"]), "--seed", str(2**70)], "--seed",
     {}),
    # campaign 5: --out a device node was replaced by the file; export-model into a checkpoint replaced its state
    ("render_out_a_device", lambda i, d: _render(i, d, out=_fifo(d / "drr.nrrd").name),
     "cannot write here: is a named pipe (FIFO)", {}),
    ("export_model_into_its_checkpoint", lambda i, d: ["export-model", str(_run_folder(d)), "--out",
                                                       str(d / "run" / "checkpoints" / "step_0000002" /
                                                           "model.safetensors")], "inside a checkpoint folder", {}),
    # campaign 6: a DICOM series --out into a folder of other files replaced the folder, deleting them
    ("reconstruct_series_into_a_folder_of_other_files", lambda i, d: _reconstruct(
        i, d, "--size", "8", "8", "8", "--out", str(_folder_holding(d / "series", "keep.txt"))),
     "series: holds 1 other file(s) or folder(s), e.g. 'keep.txt'", {}),
    # a CT given twice counted twice in the pooled scores; two CTs of one name: one silently replaced the other
    ("eval_world_same_ct_twice", lambda i, d: ["eval", "world", "--ct", str(i["ct"]), "--ct", str(i["ct"]),
                                               "--checkpoint", str(i["model"])], "is given twice", {}),
    ("eval_domain_two_cts_of_one_name", lambda i, d: [
        "eval", "domain", "--cxr", str(d), "--ct", str(_copy_into(i["ct"], d / "a")), "--ct",
        str(_copy_into(i["ct"], d / "b")), "--checkpoint", str(i["model"])], "has the name of another --ct", {}),
    # campaign 6: export-model --out into the run's DRR bank replaced its images
    ("export_model_into_its_bank", lambda i, d: ["export-model", str(_run_folder(d)), "--out",
                                                 str(_bank_folder(d) / "images.npy")], "inside a DRR bank folder", {}),
    # campaign 12: a file as the run folder was worded as "run/.xwin-train.lock: Not a directory"
    ("train_out_is_a_file", lambda i, d: ["train", "--config", str(_data_yaml(d)), "--out",
                                          str(_bytes(d / "run", b"x"))], "run: is a file; the run's --out is a folder",
     {}),
    # campaign 12: a model file given to export-model was worded as ".../tiny.safetensors/state.json: Not a directory"
    ("export_model_of_a_model_file", lambda i, d: ["export-model", str(i["model"]), "--out",
                                                   str(d / "copy.safetensors")],
     "is a file; export-model reads a training run folder", {}),
    # campaign 4: --isocenter 1 million km away was rendered (a pose file's is refused beyond 1 km)
    ("render_isocenter_1e9_mm", lambda i, d: ["render", str(i["ct"]), "--lao", "0", "--cran", "0", "--isocenter",
                                              "1e9", "0", "0", "--out", str(d / "drr.nrrd")], "isocenter", {}),
    # campaign 4: a detector pixel of 1 nm was rendered (a DRR that is no image; a source 1e300 mm away: inf)
    ("pose_pixel_1e-9_mm", lambda i, d: _render_pose(i, d, _pose(d, {"pixel_mm": 1e-9})), "pose.json", {}),
    ("register_drr_mode_unknown", lambda i, d: ["register", str(i["ct"]), str(_drr_of_mode(d, "bogus")),
                                                "--restarts", "0", "--time-limit", "5", "--out", str(d / "pose.json")],
     "drr.nrrd", {}),
    ("render_size_100000", lambda i, d: _render(i, d, "--size", "100000", "100000"), "--size 100000 100000", {}),
    # campaign 8: a μ_water past float32 passed the check, then overflowed (numpy warnings, the output blamed)
    ("render_mu_water_1e39", lambda i, d: _render(i, d, "--mu-water", "1e39"), "--mu-water: mu_water must be", {}),
    ("render_mu_water_1e-300", lambda i, d: _render(i, d, "--mu-water", "1e-300"), "--mu-water: mu_water must be",
     {}),
    # campaign 8: file names keep 0.01°, so 0 and 0.001 wrote one file ("2 DRRs" reported)
    ("render_poses_one_file_name", lambda i, d: ["render", str(i["ct"]), "--lao", "0", "0.001", "--cran", "0", "0",
                                                 "--size", "8", "8", "--out", str(d / "drrs")],
     "--lao/--cran: poses 1 and 2", {}),
    ("predict_poses_one_file_name", lambda i, d: ["predict", str(i["cxr"]), "--checkpoint", str(i["model"]), "--lao",
                                                  "10", "10.004", "--cran", "0", "0", "--out", str(d / "p")],
     "--lao/--cran: poses 1 and 2", {}),
    ("render_size_over_a_small_budget", lambda i, d: _render(i, d, "--size", "256", "256"), "XWIN_MAX_VOLUME_GB",
     {"XWIN_MAX_VOLUME_GB": "0.001"}),
    ("budget_not_a_number", lambda i, d: _render(i, d), "XWIN_MAX_VOLUME_GB", {"XWIN_MAX_VOLUME_GB": "lots"}),
    # campaign 8: matplotlib printed two warnings ahead of the error line (and worked in a temporary folder)
    ("mplconfigdir_is_a_file", lambda i, d: _render(i, d), "MPLCONFIGDIR", {"MPLCONFIGDIR": os.devnull}),
    # campaign 8: with the budget raised past the machine, the allocation that failed was a MemoryError traceback
    # (a 10⁷ x 10⁷ DRR: 364 TiB, more than any address space)
    ("render_past_the_machine_budget_raised", lambda i, d: _render(i, d, "--size", "10000000", "10000000"),
     "out of memory", {"XWIN_MAX_VOLUME_GB": "1e30"}),
    ("reconstruct_views_1e8", lambda i, d: _reconstruct(i, d, "--views", "100000000"), "--views 100000000", {}),
    ("reconstruct_grid_2000_cubed", lambda i, d: _reconstruct(i, d, "--size", "2000", "2000", "2000"),
     "--size 2000 2000 2000 (a 2000 x 2000 x 2000", {}),  # campaign 7: the option was not named
    # campaign 8: --arc inf was refused without naming --arc; --tv 1e300 ran, then its volume was NaN
    ("reconstruct_arc_inf", lambda i, d: _reconstruct(i, d, "--arc", "inf"), "--arc must be", {}),
    # campaign 12: --arc 1e-300 ran as "an arc of 0.0°" (PSNR 7.6 dB): every view the same projection
    ("reconstruct_arc_1e-300", lambda i, d: _reconstruct(i, d, "--arc", "1e-300"), "--arc must be at least 1°", {}),
    ("reconstruct_tv_1e300", lambda i, d: _reconstruct(i, d, "--method", "sart", "--tv", "1e300"), "--tv: must be",
     {}),
    ("reconstruct_tiny_spacing", lambda i, d: _reconstruct(i, d, "--spacing", "0.01"), "--spacing 0.01 (a ", {}),
    ("reconstruct_huge_detector", lambda i, d: _reconstruct(i, d, "--views", "2", "--det", "100000", "100000"),
     "100000 x 100000", {}),
    ("reconstruct_cxr_views_1e7", lambda i, d: ["reconstruct", str(i["cxr"]), "--checkpoint", str(i["model"]),
                                                "--views", "10000000", "--out", str(d / "r.nrrd")],
     "--views 10000000", {}),
    ("predict_300000_poses", lambda i, d: ["predict", str(i["cxr"]), "--checkpoint", str(i["model"]),
                                           *_distinct_poses(300, 500), "--out", str(d / "p")],
     "150000 poses", {}),
    ("eval_domain_views_1e8", lambda i, d: ["eval", "domain", "--cxr", str(d), "--ct", str(i["ct"]),
                                            "--checkpoint", str(i["model"]), "--views", "100000000"],
     "--views 100000000", {}),
    ("device_foo", lambda i, d: _render(i, d, "--device", "foo"), "--device 'foo'", {}),
    ("device_auto_outside_train", lambda i, d: _render(i, d, "--device", "auto"), "--device 'auto'", {}),
    ("device_cuda_index_absent", lambda i, d: _reconstruct(i, d, "--device", "cuda:64"), "--device cuda:64", {}),
    # campaign 8: --init with --resume was silently ignored (the checkpoint's weights won)
    ("train_resume_with_init", lambda i, d: ["train", "--config", "x.yaml", "--resume", "--init", str(i["model"])],
     "--init starts a new run", {}),
    ("train_device_cuda_index", lambda i, d: ["train", "--config", "x.yaml", "--device", "cuda:1"],
     "--device cuda:1", {}),
    ("eval_world_device_empty", lambda i, d: ["eval", "world", "--ct", str(i["ct"]), "--device", ""],
     "--device ''", {}),
    ("eval_world_train_ct_truncated", lambda i, d: ["eval", "world", "--ct", str(i["ct"]), "--train-ct",
                                                    str(_truncated_ct(d / "t.nii")), "--checkpoint",
                                                    str(i["model"]), "--renderings", "1"], "t.nii", {}),
    ("render_out_existing_file_several_poses", lambda i, d: [
        "render", str(i["ct"]), "--lao", "0", "30", "--cran", "0", "--out", str(d / _existing_file(d, "taken"))],
     "taken", {}),
    # campaign 3: a FIFO named like a CT in --ct-dir was skipped; a path the system refuses (a name of 300
    # characters, ENAMETOOLONG) was an OSError traceback
    ("train_ct_dir_with_fifo", lambda i, d: ["train", "--config", str(_data_yaml(d)), "--ct-dir",
                                             str(_with_fifo(d / "cts", "a.nii", "b.nii.gz")), "--out", str(d / "run")],
     "b.nii.gz", {}),
    ("render_ct_name_too_long", lambda i, d: ["render", str(d / ("x" * 300 + ".nii.gz")), "--lao", "0", "--cran", "0",
                                              "--out", str(d / "drr.nrrd")], "x" * 300, {}),
    ("predict_out_existing_file_several_poses", lambda i, d: [
        "predict", str(i["cxr"]), "--checkpoint", str(i["model"]), "--lao", "0", "30", "--cran", "0",
        "--out", str(d / _existing_file(d, "taken"))], "taken", {}),
    # campaign 7: the viewer started Qt before looking at its files (without a display Qt aborted the process)
    ("viewer_ct_missing", lambda i, d: ["viewer", "--ct", str(d / "nope.nrrd")], "nope.nrrd", {}),
    ("viewer_ct_is_a_film", lambda i, d: ["viewer", "--ct", str(i["cxr"])], "cxr.png", {}),
    ("viewer_without_a_display", lambda i, d: ["viewer", "--ct", str(i["ct"])], "needs a display",
     {"DISPLAY": "", "WAYLAND_DISPLAY": "", "QT_QPA_PLATFORM": ""}),
    # campaign 4: an --out that is the command's own input was overwritten (the CT replaced by its DRR)
    ("render_out_is_its_ct", lambda i, d: ["render", str(shutil.copy(i["ct"], d / "ct.nrrd")), "--lao", "0", "--cran",
                                           "0", "--size", "8", "8", "--out", str(d / "ct.nrrd")], "ct.nrrd", {}),
]
if not torch.cuda.is_available():
    REQUEST_CASES += [
        ("device_cuda_without_cuda", lambda i, d: ["predict", str(i["cxr"]), "--checkpoint", str(i["model"]),
                                                   "--lao", "0", "--cran", "0", "--device", "cuda",
                                                   "--out", str(d / "p.png")], "--device cuda", {}),
        ("train_device_cuda_without_cuda", lambda i, d: ["train", "--config", "x.yaml", "--device", "cuda"],
         "--device cuda", {}),
    ]
if not torch.backends.mps.is_available():
    REQUEST_CASES.append(("device_mps_absent", lambda i, d: _render(i, d, "--device", "mps"), "--device mps", {}))


@pytest.mark.parametrize("argv, culprit, env", [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES])
def test_bad_request(argv, culprit, env, inputs, case_dir, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    line = _refused(argv(inputs, case_dir), case_dir, culprit, capsys)
    if "GiB" in line:
        assert "XWIN_MAX_VOLUME_GB" in line  # says the budget and how to change it


@pytest.mark.parametrize("argv, line", [
    (["render", "ct.nrrd", "--lao", "0", "--cran", "0", "--size", "a", "8", "--out", "drr.png"],
     "xwin render: error: argument --size: invalid int value: 'a' (see xwin render --help)"),
    # campaign 4: an empty --out (an unset shell variable) wrote the DRRs into the current folder
    (["render", "ct.nrrd", "--lao", "0", "--cran", "0", "--out", ""],
     "xwin render: error: argument --out: '' is an empty path (give a file or folder) (see xwin render --help)"),
    # an empty positional path was read as the current folder ("xwin info ''": ".: contains no DICOM images")
    (["info", " "], "xwin info: error: argument file: ' ' is an empty path (give a file or folder) "
                    "(see xwin info --help)"),
    (["reconstruct", "", "--out", "r.nrrd"], "xwin reconstruct: error: argument CXR: '' is an empty path (give a "
                                             "file or folder) (see xwin reconstruct --help)"),
    (["eval", "world", "--cases", ""], "xwin eval world: error: argument --cases: '' is an empty path (give a file "
                                       "or folder) (see xwin eval world --help)"),
])
def test_usage_error_is_one_line(argv, line, capsys):
    """Campaign 4: an argparse usage error printed the whole usage (7 lines) before its own line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert err.splitlines() == [line]


# --- bombs and budgets in a subprocess under resource limits ---------------------------------------------------

LIMITS = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_DATA, ({3 << 30}, {3 << 30}))
resource.setrlimit(resource.RLIMIT_CPU, (240, 240))
from xwin.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv", [
    lambda i, d: ["train", "--config", str(_yaml(d / "bomb.yaml", BOMB)), "--out", str(d / "run")],
    lambda i, d: _render(i, d, "--size", "100000", "100000"),
    lambda i, d: _reconstruct(i, d, "--size", "2000", "2000", "2000"),
], ids=["alias_bomb", "render_size_100000", "reconstruct_grid_2000_cubed"])
def test_bombs_and_budgets_under_limits(argv, inputs, case_dir):
    args = argv(inputs, case_dir)
    before = _tree(case_dir)
    env = {k: v for k, v in os.environ.items() if k != "XWIN_MAX_VOLUME_GB"}
    run = subprocess.run([sys.executable, "-c", LIMITS, *args], capture_output=True, text=True, timeout=300,
                         cwd=case_dir, env=env)
    lines = run.stderr.splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stdout == "" and _tree(case_dir) == before


def test_an_address_space_limit_too_low_for_torch_is_one_line(inputs, case_dir):
    """Campaign 12 (J6): under ``ulimit -v`` 4 GiB `xwin predict` died in a traceback (libllvmlite.so could not be
    mapped; lower, libtorch_cpu.so). Under 1 GiB, set once the CLI is imported (as torch is, lazily, by the command):
    one line naming the limit and what to set, exit 2."""
    script = ("import resource, sys\nfrom xwin.cli import main\n"
              f"resource.setrlimit(resource.RLIMIT_AS, ({1 << 30}, {1 << 30}))\nsys.exit(main(sys.argv[1:]))\n")
    args = ["predict", str(inputs["cxr"]), "--checkpoint", str(inputs["model"]), "--lao", "30", "--cran", "0",
            "--out", str(case_dir / "p.nrrd")]
    run = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                         cwd=case_dir)
    assert run.returncode == 2 and run.stderr.splitlines() == [
        "xwin predict: error: a library could not be loaded under the address-space limit (ulimit -v 1048576 KiB = "
        "1.0 GiB): PyTorch and numba reserve more address space than they use; raise it to at least 8 GiB (ulimit -v "
        "8388608) or lift it (ulimit -v unlimited)"], run.stderr
    assert not (case_dir / "p.nrrd").exists()


@pytest.mark.parametrize("make, argv, culprit", [
    (lambda d: _fifo(d / "cases.csv"),
     lambda d, f: ["train", "--config", str(_data_yaml(d, ct=[], cases=str(f))), "--out", str(d / "run")], "cases.csv"),
    (lambda d: (d / "cases.csv").symlink_to("/dev/zero") or d / "cases.csv",
     lambda d, f: ["train", "--config", str(_data_yaml(d, ct=[], cases=str(f))), "--out", str(d / "run")], "cases.csv"),
    (lambda d: _fifo(d / "pose.json"),
     lambda d, f: ["render", str(d / "ct.nrrd"), "--pose", str(f), "--out", str(d / "drr.nrrd")], "pose.json"),
    (lambda d: (d / "pose.json").symlink_to("/dev/zero") or d / "pose.json",
     lambda d, f: ["render", str(d / "ct.nrrd"), "--pose", str(f), "--out", str(d / "drr.nrrd")], "pose.json"),
], ids=["cases_csv_fifo", "cases_csv_dev_zero", "pose_fifo", "pose_dev_zero"])
def test_special_files_are_refused_unopened(make, argv, culprit, inputs, case_dir):
    """Campaign 3: a cases CSV or a pose file that is a FIFO blocked forever, /dev/zero filled the memory. In a
    subprocess under the same limits as the bombs, with a timeout: one line naming the file, exit 2."""
    (case_dir / "ct.nrrd").write_bytes(inputs["ct"].read_bytes())
    args = argv(case_dir, make(case_dir))
    before = _tree(case_dir)
    env = {k: v for k, v in os.environ.items() if k != "XWIN_MAX_VOLUME_GB"}
    run = subprocess.run([sys.executable, "-c", LIMITS, *args], capture_output=True, text=True, timeout=120,
                         cwd=case_dir, env=env)
    lines = run.stderr.splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    command = " ".join(args[:2]) if args[0] == "eval" else args[0]
    assert lines[0].startswith(f"xwin {command}: error: ") and culprit in lines[0], lines[0]
    assert run.stdout == "" and _tree(case_dir) == before


def test_pose_file_nested_or_huge_numbers_is_one_line(inputs, case_dir, capsys):
    """Campaign 3: a pose file nested 100,000 deep and one whose angle has 5,000 digits (ValueError of Python's
    digit limit, a JSON error of another type)."""
    for text in ("[" * 100_000 + "]" * 100_000, '{"lao_deg": 1' + "0" * 5000 + "}"):
        pose = _yaml(case_dir / "pose.json", text)
        line = _refused(_render_pose(inputs, case_dir, pose), case_dir, "pose.json", capsys)
        assert "readable json pose file" in line.lower()


def test_pose_file_with_byte_order_mark_is_read(tmp_path):
    """Campaign 4: a pose file saved with a UTF-8 byte-order mark (Notepad) was refused as not JSON."""
    from xwin.register import read_pose

    pose = _pose(tmp_path)
    pose.write_bytes(b"\xef\xbb\xbf" + pose.read_bytes())
    assert read_pose(pose)[0].lao == 10.0


def test_cases_csv_with_byte_order_mark_is_read(tmp_path):
    """A cases CSV saved by Excel (UTF-8 with a byte-order mark) is read: the mark is not part of the column name."""
    from xwin.data.ct import split_cts

    cases = _bytes(tmp_path / "cases.csv", b"\xef\xbb\xbffile,split\na.nii,train\nb.nii,eval\n")
    assert split_cts(cases, "train") == [tmp_path / "a.nii"]
