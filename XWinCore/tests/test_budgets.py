"""Memory budgets of the big requests (issue 16): `xwin eval world --renderings`, the training step (batch size, real
films per batch) and the DRR bank a config asks for are estimated up front (xwin/budget.py, constants measured there)
and refused over ``XWIN_MAX_VOLUME_GB``, through the real CLI, as the corpus of test_bad_models_configs.py: exit 2,
one stderr line naming the culprit (the option, or the config file) and the budget variable, no traceback, no new
file, bounded time and memory. The shipped CPU configs fit the default budget."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bad_models_configs import TINY, _refused, _yaml, case_dir, inputs, warm_imports  # noqa: F401 (fixtures)

from xwin.budget import DRR_BYTES_PER_PIXEL, bank_bytes, eval_world_bytes, train_step_bytes
from xwin.config import XWinConfig, config_path, load_config
from xwin.io.validate import DEFAULT_MEMORY_GB


def _eval_world(good, d: Path, renderings: int) -> list[str]:
    return ["eval", "world", "--ct", str(good["ct"]), "--checkpoint", str(good["model"]), "--renderings",
            str(renderings), "--device", "cpu"]


def _train(d: Path, good, **sections) -> list[str]:
    """`xwin train` of the tiny model on the test CT with ``sections`` merged into the config."""
    config = {**TINY, "data": {"ct": [str(good["ct"])], "lao": [-30.0, 0.0, 30.0], "cran": [0.0],
                               "spacing_mm": 5.0, **sections.pop("data", {})}, **sections}
    path = _yaml(d / "big.yaml", json.dumps(config))
    return ["train", "--config", str(path), "--out", str(d / "run"), "--device", "cpu"]


# (id, argv(inputs, case_dir), culprit: the option or "config" for the config file, words, environment)
CASES = [
    ("eval_world_renderings_1e9", lambda i, d: _eval_world(i, d, 10**9), "--renderings 1000000000",
     ["jittered renderings"], {}),
    ("eval_world_renderings_over_a_small_budget", lambda i, d: _eval_world(i, d, 2000), "--renderings 2000",
     ["0.01 gib"], {"XWIN_MAX_VOLUME_GB": "0.01"}),
    ("train_batch_size_1e9", lambda i, d: _train(d, i, train={"batch_size": 10**9}), "config",
     ["train.batch_size", "1000000000 pairs", "grad_accum"], {}),
    ("train_real_films_per_batch_1e9", lambda i, d: _train(d, i, data={"real_per_batch": 10**9}), "config",
     ["train.batch_size", "1000000000 real films"], {}),
    ("train_bank_augmentations_1e7", lambda i, d: _train(d, i, data={"augmentations": 10**7}), "config",
     ["drr bank", "10000001 copies", "data.augmentations"], {}),
    ("train_bank_1000000_views", lambda i, d: _train(d, i, data={"lao": [0.0] + [1 + k * 0.05 for k in range(999)],
                                                                 "cran": [0.0] + [1 + k * 0.04 for k in range(999)]}),
     "config", ["drr bank", "1000000 views"], {}),
    ("train_bank_spacing_0_01_mm", lambda i, d: _train(d, i, data={"spacing_mm": 0.01}), "config",
     ["drr bank", "data.spacing_mm"], {}),
    ("train_bank_over_a_small_budget", lambda i, d: _train(d, i, data={"augmentations": 3}), "config",
     ["drr bank", "0.05 gib"], {"XWIN_MAX_VOLUME_GB": "0.05"}),
]


@pytest.mark.parametrize("argv, culprit, words, env", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_request_over_budget(argv, culprit, words, env, inputs, case_dir, monkeypatch, capsys):  # noqa: F811
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = argv(inputs, case_dir)
    line = _refused(args, case_dir, args[2] if culprit == "config" else culprit, capsys)
    assert "XWIN_MAX_VOLUME_GB" in line and "gib allowed" in line.lower()
    for word in words:
        assert word in line.lower(), (word, line)


def test_shipped_cpu_configs_fit_the_default_budget():
    """cpu_small and its stages: a step and the bank of 8 CTs (their data) within the default 4 GiB."""
    budget = DEFAULT_MEMORY_GB * 2**30
    for name in ("cpu_small", "cpu_small_stage2", "cpu_small_stage3", "cpu_small_stage4", "cpu_small_stage5",
                 "cpu_small_mim_only"):
        cfg = load_config(config_path(name))
        assert train_step_bytes(cfg) < budget / 2 and bank_bytes(cfg, 8) < budget / 2, name


def test_estimates_grow_with_the_request():
    """Each estimate is linear in what the user asks for (pairs, copies, renderings) beyond a fixed part."""
    small = XWinConfig.from_dict({**TINY, "train": {"batch_size": 2}, "data": {"augmentations": 1}})
    large = XWinConfig.from_dict({**TINY, "train": {"batch_size": 4}, "data": {"augmentations": 3}})
    step = train_step_bytes(large) - train_step_bytes(small)
    assert step == 2 * (train_step_bytes(small) - train_step_bytes(
        XWinConfig.from_dict({**TINY, "train": {"batch_size": 1}}))) // 1 > 0
    assert bank_bytes(large, 5) - bank_bytes(small, 5) == 2 * (bank_bytes(small, 5) - bank_bytes(
        XWinConfig.from_dict({**TINY, "data": {"augmentations": 0}}), 5))
    renderings = [eval_world_bytes(small.model, n, 1, 128) for n in (1, 2, 3)]
    assert renderings[2] - renderings[1] == renderings[1] - renderings[0] > 0
    assert DRR_BYTES_PER_PIXEL * 256 * 256 < 2**30  # the default render is far inside any budget
