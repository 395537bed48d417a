"""A slider preview while a reconstruction runs never aborts the process (issue 14).

The DRR and FDK kernels are numba ``parallel=True``. The panel renders previews on the GUI thread while the session's
worker thread reconstructs; with numba's ``workqueue`` threading layer (the one always present) two concurrent
launches abort the whole process ("Concurrent access has been detected", exit 134: Slicer would vanish). Every XWin
parallel kernel is therefore launched under one process-wide lock (`xwin.drr.joseph_numba.PARALLEL_LOCK`).
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import xwin

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from conftest import write_synthetic_ct
    from xwin.io import read_ct
    from xwin.viewer.session import Session

    s = Session()
    s.update(height=48, width=48, pixel=5.0)
    s.set_ct(read_ct(write_synthetic_ct(Path(sys.argv[1]) / "ct.nrrd")))
    s.drr(0.0, 0.0, preview=True)
    n = 0
    runs = (("fdk", 90, {"size": (40, 40, 40)}), ("sart", 30, {"iters": 2, "size": (32, 32, 32)}))
    for method, views, options in runs:
        future = s.submit(s.reconstruct, "ct", method, views, **options)  # the panel's worker thread
        while not future.done():  # the GUI thread dragging the slider
            s.drr(float(n % 90), 0.0, preview=True)
            n += 1
        future.result()
    import numba
    print("layer", numba.threading_layer(), "previews", n, "ok")
""")


def test_preview_during_reconstruction_with_the_workqueue_layer(tmp_path):
    script = tmp_path / "preview_during_recon.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    r = subprocess.run([sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-1500:]}"
    assert "layer workqueue" in r.stdout and r.stdout.strip().endswith("ok"), r.stdout
    assert int(r.stdout.split("previews")[1].split()[0]) > 0, "no preview overlapped the reconstruction"


def test_every_parallel_numba_kernel_of_the_core_is_serialised():
    """A guard for new kernels: any numba dispatcher compiled with parallel=True in the xwin package must be wrapped
    by `parallel_kernel` (the module attribute is the wrapper, not the bare dispatcher)."""
    from numba.core.registry import CPUDispatcher

    from xwin.drr.joseph_numba import PARALLEL_LOCK, parallel_kernel

    root = Path(xwin.__file__).parent
    modules = [".".join(p.relative_to(root.parent).with_suffix("").parts) for p in root.rglob("*.py")
               if "parallel=True" in p.read_text(encoding="utf-8")]
    assert {"xwin.drr.joseph_numba", "xwin.recon.fdk"} <= set(modules)
    wrapped = 0
    for name in modules:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            assert not (isinstance(value, CPUDispatcher) and value.targetoptions.get("parallel")), \
                f"{name}.{attr} is a parallel numba kernel launched without PARALLEL_LOCK"
            wrapped += isinstance(value, parallel_kernel)
    assert wrapped >= 4  # forward, _scatter, _reduce, _backproject_numba
    from xwin.drr import joseph_numba
    assert joseph_numba.forward.stats == joseph_numba.forward.dispatcher.stats  # bench/drr.py reads .stats
    assert PARALLEL_LOCK.acquire(blocking=False)
    PARALLEL_LOCK.release()
