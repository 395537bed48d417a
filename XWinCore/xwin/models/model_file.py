"""The model-file formats, read and written here only: training checkpoints and exported inference files. Atomic and
pickle-free: safetensors for tensors, JSON for everything else. Below `xwin.train` (which writes checkpoints) and
`xwin.predict` / `xwin.eval` (which read both), so that inference never imports the trainer.

A run folder holds ``checkpoints/step_NNNNNNN/`` folders, each with ``model.safetensors``, ``optimizer.safetensors``
and ``state.json`` (step, optimizer hyper-parameters, RNG states, config, metrics), and ``checkpoints/latest.json``
naming the newest complete one. Each checkpoint is written into a temporary folder and renamed into place, and
``latest.json`` is replaced atomically afterwards, so a crash (even SIGKILL) at any moment leaves the previous
checkpoint intact and loadable. Loading never unpickles code.

An exported inference file (`write_model_file`, ``xwin export-model``) is one ``.safetensors`` file whose metadata
holds ``format`` (``MODEL_FORMAT``), ``config`` (the config as JSON) and ``step``; `read_weights` reads either form.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..config import XWinConfig
from ..errors import XWinInputError
from ..io.validate import MEMORY_ENV, file_problem, memory_budget
from ..io.writers import atomic_output

LATEST = "latest.json"
MODEL_FORMAT = "xwin-world-model/1"  # metadata "format" of an exported inference file (`xwin export-model`)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder (fsync'ed) and os.replace."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None, state: dict, keep: int = 3) -> Path:
    """Write checkpoint ``step`` of ``model`` (+ optimizer, + JSON ``state``) atomically; keep the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    with atomic_output(final, folder=True) as tmp:  # a complete folder replaces any older one of the same step
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        meta: dict[str, Any] = {}
        if optimizer is not None:
            tensors, meta = _optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state().tolist()}
        if torch.cuda.is_available():
            rng["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "optimizer": meta, "rng": rng}))
    write_json_atomic(root / LATEST, {"step": step, "path": final.name})
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike, strict: bool = False) -> Path | None:
    """The newest complete checkpoint folder of a run, or None (``strict``: a ``latest.json`` that exists but is
    unreadable or names no checkpoint folder of this run is refused, naming it)."""
    root = Path(run_dir) / "checkpoints"
    pointer_file = root / LATEST
    try:
        pointer = json.loads(pointer_file.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        if strict and (pointer_file.exists() or pointer_file.is_symlink()):
            raise XWinInputError(pointer_file, f"not a readable checkpoint pointer ({one_line(exc)})") from None
        return None
    name = pointer.get("path") if isinstance(pointer, dict) else None
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        if strict:
            raise XWinInputError(pointer_file, f"names {one_line(repr(name))}, not a checkpoint folder of this run "
                                               "(expected a step_NNNNNNN folder beside it)")
        return None
    path = root / name
    step = pointer.get("step")
    if strict and (not isinstance(step, int) or name != f"step_{step:07d}"):  # which one to continue is a guess
        raise XWinInputError(pointer_file, f"says step {one_line(repr(step))} but names {name}: not the pointer "
                                           "this run wrote")
    if (path / "state.json").is_file():
        return path
    if strict:
        raise XWinInputError(pointer_file, f"names {name}, which holds no state.json (a deleted or partial checkpoint)")
    return None


def read_state(path: Path) -> dict:
    """The ``state.json`` of checkpoint folder ``path`` (step, config as a validated plain dict, ...)."""
    file = path / "state.json"
    problem = file_problem(file)
    if problem:
        raise XWinInputError(file, problem)
    try:
        state = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise XWinInputError(file, f"not a readable checkpoint state ({one_line(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise XWinInputError(file, "not an XWin checkpoint state (no step)")
    state["config"] = _model_config(file, state.get("config")).to_dict()
    return state


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict]:
    """(model tensors, optimizer tensors or None, state) of a checkpoint folder (or a run folder: its latest).
    A problem is reported against the file that has it."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        last = latest_checkpoint(path, strict=True)
        if last is None:
            raise XWinInputError(path, f"holds no complete checkpoint (no checkpoints/{LATEST})")
        path = last
    elif path.is_dir() and not (path / "state.json").exists():
        raise XWinInputError(path, "neither a training run (no checkpoints/ folder) nor a checkpoint folder (no "
                                   "state.json)")
    state = read_state(path)
    model = _load_tensors(path / "model.safetensors")
    opt_file = path / "optimizer.safetensors"
    optim = _load_tensors(opt_file) if opt_file.is_file() else None
    return model, optim, state


def one_line(exc: BaseException | str | None) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_unique_names(path: Path, size: int) -> None:
    """A safetensors header naming a tensor twice is refused (the reader keeps one of them without a word); a
    header that cannot be parsed is left to safetensors, which says why."""
    twice: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        twice.extend(k for n, k in enumerate(keys) if k in keys[:n])
        return dict(items)

    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else 0
        if not 0 < length <= min(size - 8, 100 << 20):
            return
        try:
            json.loads(f.read(length), object_pairs_hook=pairs)
        except (ValueError, RecursionError):
            return
    if twice:
        raise XWinInputError(path, f"not an XWin model file (its header lists {one_line(twice[0])!r} twice)")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (a file larger than the memory budget is refused unread); every floating
    weight must be finite."""
    problem = file_problem(path)
    if problem:
        raise XWinInputError(path, problem)
    size, budget = path.stat().st_size, memory_budget()
    if size > budget:
        raise XWinInputError(path, f"a model file of {size / 2**30:.1f} GiB, more than the {budget / 2**30:g} GiB "
                                   f"allowed (set {MEMORY_ENV} to raise the limit)")
    _check_unique_names(path, size)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:  # a truncated or foreign file
        raise XWinInputError(path, f"not a readable safetensors file ({one_line(exc)})") from None
    for name, value in tensors.items():
        if value.is_floating_point() and value.dtype not in _FLOAT_DTYPES:  # float8: no isfinite, no model math
            raise XWinInputError(path, f"weight {one_line(name)} is {str(value.dtype).removeprefix('torch.')}; "
                                       "XWin reads float16, bfloat16, float32 or float64 weights")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise XWinInputError(path, f"weight {one_line(name)} holds NaN or infinite values")
    return tensors


def _floating(path: Path, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights``, refused when one is an int or bool tensor (a model would cast it to floats without a word)."""
    for name, value in weights.items():
        if not value.is_floating_point():
            raise XWinInputError(path, f"weight {one_line(name)} is {str(value.dtype).removeprefix('torch.')}, "
                                       "not floating point")
    return weights


def _unique_keys(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that names no key twice (json keeps the last without a word; YAML configs refuse it too)."""
    keys = [k for k, _ in items]
    twice = next((k for n, k in enumerate(keys) if k in keys[:n]), None)
    if twice is not None:
        raise ValueError(f"key {twice!r} is given twice: which value is meant?")
    return dict(items)


def _model_config(path: Path, config: Any) -> XWinConfig:
    """The validated config stored with a model, as JSON text or a mapping (``path``: the file it came from)."""
    if isinstance(config, str):
        try:
            config = json.loads(config, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested deeper than Python's stack
            raise XWinInputError(path, f"the model's config is not valid JSON ({one_line(exc)})") from None
    if not isinstance(config, dict):
        raise XWinInputError(path, f"the model's config must be a mapping of sections, got "
                                   f"{'nothing' if config is None else type(config).__name__}")
    try:
        return XWinConfig.from_dict(config)
    except XWinInputError as exc:
        raise XWinInputError(path, f"the model's {exc.problem}") from None


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                      folder: Path) -> None:
    """Load optimizer state saved by `save_checkpoint` in checkpoint ``folder`` (tensors moved to the parameters'
    devices). Every tensor must belong to a parameter and have its shape (or be a scalar, as AdamW's step): a
    damaged or foreign state is refused naming its file here, not in the first optimizer step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    try:
        state = _optimizer_state(tensors, meta)
        for idx, entries in state["state"].items():
            for name, value in entries.items():
                if isinstance(value, torch.Tensor) and value.ndim and (
                        not 0 <= idx < len(params) or value.shape != params[idx].shape):
                    raise ValueError(f"tensor {idx}.{name} of shape {tuple(value.shape)} fits no parameter of "
                                     "this model")
        optimizer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise XWinInputError(folder / "optimizer.safetensors", f"does not hold this run's optimizer state "
                             f"({one_line(exc)})") from None


def restore_rng(rng: Any, folder: Path) -> None:
    """Restore the torch (and CUDA) random states saved in checkpoint ``folder``'s state.json."""
    try:
        torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in rng["cuda"]])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise XWinInputError(folder / "state.json", f"its random state cannot be restored ({one_line(exc)})") from None


def write_model_file(out: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict, step: int) -> Path:
    """Write an exported model file atomically: ``tensors`` with the metadata `read_weights` checks (``MODEL_FORMAT``,
    ``config`` (a plain dict, `XWinConfig.to_dict`) as JSON, the training ``step``)."""
    meta = {"format": MODEL_FORMAT, "config": json.dumps(config), "step": str(step)}
    out = Path(out)
    with atomic_output(out) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return out


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], XWinConfig]:
    """(tensors, validated config) of an exported model file (``MODEL_FORMAT``) or a checkpoint/run folder.

    An exported file also holds ``mean_projection.images`` / ``mean_projection.poses``; its weights may be fp16.
    """
    path = Path(path)
    if path.is_dir():
        weights, _, state = load_checkpoint(path)
        return _floating(path, weights), XWinConfig.from_dict(state["config"])
    if not path.exists():
        raise XWinInputError(path, "model not found (expected an exported .safetensors file or a checkpoint folder)")
    problem = file_problem(path)
    if problem:
        raise XWinInputError(path, problem)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != MODEL_FORMAT:
            raise XWinInputError(path, f"not an XWin model file (format {one_line(meta.get('format', 'none'))!r}, "
                                       f"expected {MODEL_FORMAT})")
        config = _model_config(path, meta.get("config"))
        return _floating(path, _load_tensors(path)), config
    except (OSError, SafetensorError) as exc:  # safetensors raises these for foreign and truncated files
        raise XWinInputError(path, f"not an XWin model file ({one_line(exc)})") from None
