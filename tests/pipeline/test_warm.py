"""The driver imports numba on its own thread before the kernel-loading thread starts."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import sys, threading
from types import SimpleNamespace
import fastprep.pipeline.run as run
assert "numba" not in sys.modules, "numba must not be imported by the pipeline's import"
gate = threading.Event()
run.warm_kernels = lambda *a: gate.wait()   # the thread imports nothing until released
run._warm_args = lambda cfg, bundle: ()
cfg = SimpleNamespace(recipe=SimpleNamespace(dedupe=SimpleNamespace(minhash=None)))
t = run._start_warm(cfg, None, SimpleNamespace(pool=object()))
ok = "numba" in sys.modules and hasattr(sys.modules["numba"], "core")
gate.set(); t.join()
print("imported" if ok else "not imported")
"""


def test_numba_is_imported_before_the_warm_thread_starts() -> None:
    """Bug caught: a fresh CI run failed at the driver's first kernel with ``module 'numba'
    has no attribute 'core'``: numba's first import ran in the kernel-loading thread, failed
    there silently and left a broken package behind. The driver now imports it first."""
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "imported"
