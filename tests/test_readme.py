"""The README's commands and Python snippets run as written (in a scratch folder, in order).

The install steps (``python3 -m venv``, ``pip install``) and the test command are what CI and a
fresh clone check; here each block runs with the fastprep already installed. The Python
snippets run after the quick start and the "Command line" block made the files they read
(default suite); every shell block runs in the slow suite (``-m slow``: Ray, training, torchrun).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ("python3 -m venv", ". .venv/bin/activate", "pip install", "python -m pytest")


def blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def runnable(block: str) -> str:
    """The block without its install steps: ``a && pip install x && b`` -> ``b``."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        parts = [p.strip() for p in line.split(" && ")]
        kept = [p for p in parts if not p.startswith(SETUP)]
        if kept:
            out.append(" && ".join(kept))
    return "\n".join(out)


def bash(script: str, cwd: Path, timeout: int = 900) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True,
                       text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{script}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"


def python(snippet: str, cwd: Path) -> str:
    path = cwd / "snippet.py"
    path.write_text(snippet)
    r = subprocess.run([sys.executable, str(path)], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{snippet}\n--- stderr\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick start and the "Command line" block, as a user runs them first."""
    d = tmp_path_factory.mktemp("readme")
    (d / "examples").symlink_to(ROOT / "examples")
    quick, _tests, command_line = blocks("bash")[:3]
    assert "fastprep sample" in quick and "python -m pytest" in _tests
    bash(runnable(quick), d)
    bash(runnable(command_line), d)
    return d


def test_blocks_are_found_and_setup_is_stripped() -> None:
    assert len(blocks("python")) >= 3 and len(blocks("bash")) >= 6
    assert runnable("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && fastprep "
                    "sample s") == "fastprep sample s"
    assert runnable("a \\\n  --flag") == "a    --flag"


def test_readme_python_snippets_run_as_written(workdir: Path) -> None:
    for snippet in blocks("python"):
        if "import torch" in snippet or "fastprep.train" in snippet:
            if importlib.util.find_spec("torch") is None:
                continue  # the [train] extra is not installed: nothing of fastprep to run
        python(snippet, workdir)
    assert (workdir / "ds_py" / "manifest.json").is_file()


@pytest.mark.slow
def test_readme_commands_run_as_written(workdir: Path) -> None:
    for block in blocks("bash")[3:]:
        script = runnable(block)
        if "fastprep train" in script or "finetune_chat" in script:
            pytest.importorskip("torch")
        if "ray start" in script:
            pytest.importorskip("ray")
            try:
                bash(script, workdir)
            finally:
                subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
            continue
        bash(script, workdir)
    assert (workdir / "ds_alpaca" / "manifest.json").is_file()
