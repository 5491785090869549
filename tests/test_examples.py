"""The examples in examples/ run as documented and pass their own checks.

Each ``examples/*.py`` (except the shared ``_common.py``, so a new example is picked up without
editing this file) runs in its test mode, ``--fast``: it prepares its data, inspects it, reads
the loss mask back from the arrays and checks it, and trains the tiny model a few steps. The
selected examples run one after another in one Python process (``runpy``, as ``python
examples/X.py`` runs them), so torch, transformers and numba are imported once instead of once
per example: ~25 s instead of ~80 s on a busy 2-core machine. They share one tokenizer through
a cache folder. ``examples/README.md`` lists every example, and every task type of the
examples issue has one. Without torch, an example (run as its own process) still prepares and
checks its data and then stops at the training step with fastprep's install hint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
TASKS = ("chat_persona", "question_answering", "summarization", "translation", "paraphrase",
         "code_generation", "rag")

# Runs examples/NAME.py --fast --out OUT/NAME for each NAME; writes {NAME: {rc, output}} to RESULTS.
RUNNER = r"""
import contextlib, io, json, runpy, sys, traceback
from pathlib import Path

examples, out, results = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(examples))  # what `python examples/NAME.py` puts first
done = {}
for name in sys.argv[4:]:
    log = io.StringIO()
    sys.argv = [str(examples / f"{name}.py"), "--fast", "--out", str(out / name)]
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            rc = 0
        except SystemExit as e:  # as the interpreter reports it: a message means status 1
            rc = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if isinstance(e.code, str):
                print(e.code)
        except BaseException:
            traceback.print_exc()
            rc = 1
    done[name] = {"rc": rc, "output": log.getvalue()}
results.write_text(json.dumps(done))
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {**os.environ, "FASTPREP_EXAMPLES_CACHE": str(tmp_path_factory.mktemp("examples-cache")),
            # the tiny model gains nothing from threads, and on a busy 2-core machine
            # oversubscribed torch threads make a step up to 50x slower
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def ran(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        env: dict[str, str]) -> tuple[Path, dict[str, dict]]:
    """The output folder and {example: {rc, output}} of the examples this session selected."""
    pytest.importorskip("torch")
    names = sorted({item.callspec.params["script"].stem for item in request.session.items
                    if "script" in getattr(getattr(item, "callspec", None), "params", {})})
    out = tmp_path_factory.mktemp("examples")
    results = out / "results.json"
    r = subprocess.run([sys.executable, "-c", RUNNER, str(EXAMPLES), str(out), str(results), *names],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0 and results.is_file(), f"the runner failed\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return out, json.loads(results.read_text())


def test_every_task_type_has_an_example_and_the_readme_lists_each() -> None:
    names = {p.stem for p in SCRIPTS}
    assert set(TASKS) <= names, f"no example for {sorted(set(TASKS) - names)}"
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for path in [*SCRIPTS, *EXAMPLES.glob("*.sh")]:
        assert f"`{path.name}`" in readme, f"examples/README.md does not list {path.name}"
        if path.suffix == ".py":
            assert f"python examples/{path.name}" in readme, f"examples/README.md: how to run {path.name}?"


@pytest.mark.torch
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_example_runs_and_passes_its_checks(script: Path, ran: tuple[Path, dict[str, dict]]) -> None:
    out, results = ran
    result, folder = results[script.stem], out / script.stem
    text = result["output"]
    assert result["rc"] == 0, f"{script.name} exited with status {result['rc']}\n{text[-6000:]}"
    assert "$ fastprep prepare " in text and "$ fastprep inspect " in text, text[-3000:]
    assert "\nlosses: " in text and "CHECK FAILED" not in text, text[-3000:]
    assert (folder / "ds" / "manifest.json").is_file() and (folder / "run" / "log.jsonl").is_file()


def test_without_torch_an_example_stops_at_training_with_the_install_hint(
        tmp_path: Path, env: dict[str, str]) -> None:
    hidden = tmp_path / "no-torch"  # shadows an installed torch: `import torch` fails as if absent
    (hidden / "torch").mkdir(parents=True)
    (hidden / "torch" / "__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    pythonpath = os.pathsep.join(p for p in (str(hidden), env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, str(EXAMPLES / "question_answering.py"), "--fast", "--out",
                        str(tmp_path / "out")], cwd=ROOT, env={**env, "PYTHONPATH": pythonpath},
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 1, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "loss on the completion + EOS only" in r.stdout  # everything before training ran
    assert "pip install 'fastprep[train]'" in r.stderr, r.stderr[-2000:]
