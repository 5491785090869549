"""The command line: one-line errors with exit codes, and the prepare -> inspect -> verify flow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_texts, write_jsonl
from fastprep.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastprep", *args], capture_output=True, text=True, timeout=300)


def test_prepare_inspect_verify_flow(tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(80)], raw_lines=[b"{oops"])
    out = tmp_path / "ds"
    assert main(["prepare", str(p), "--tokenizer", str(tokenizer_dir), "--seq-len", "64",
                 "--out", str(out), "--json", "--no-progress"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["counts"]["dropped"] == {"malformed_json": 1}
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "packing efficiency" in shown and "segment 1" in shown and "input_ids:uint16" in shown
    assert main(["verify", str(out)]) == 0
    assert "ok:" in capsys.readouterr().out


def test_module_entry_point_one_line_errors(tmp_path: Path, tokenizer_dir: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha"}])
    cases = [
        (["prepare", str(tmp_path / "nope.jsonl"), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "o")],
         "no such file"),
        (["prepare", str(p), "--tokenizer", str(tmp_path / "no-tok"), "--out", str(tmp_path / "o")],
         "no such tokenizer"),
        (["prepare", str(p), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "o"), "--seq-len", "0"],
         "--seq-len"),
        (["prepare", str(p), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "o"), "--fill", "x"],
         "FIELD=VALUE"),
        (["inspect", str(tmp_path)], "not a finished fastprep dataset"),
    ]
    for args, message in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_prepare_never_imports_torch(tmp_path: Path, tokenizer_dir: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha beta"}])
    code = ("import sys; from fastprep.cli import main; "
            f"rc = main(['prepare', {str(p)!r}, '--tokenizer', {str(tokenizer_dir)!r}, '--out', "
            f"{str(tmp_path / 'o')!r}, '--no-progress']); "
            "assert rc == 0; assert 'torch' not in sys.modules, 'prepare imported torch'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_read_only_output_is_a_one_line_error(tmp_path: Path, tokenizer_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Root ignores permission bits, so the read-only folder is simulated where the run first
    writes: creating its work folder."""
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha beta"}])
    out = tmp_path / "ro"
    out.mkdir()
    real_mkdir = Path.mkdir

    def refuse(self: Path, *a, **kw) -> None:
        if self.parent == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", refuse)
    rc = main(["prepare", str(p), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().splitlines() == [f"fastprep: error: {out / '.fastprep-work'}: Permission denied"]
    assert list(out.iterdir()) == []  # nothing half-written


def test_inspect_into_a_closed_pipe_exits_zero(tmp_path: Path, tokenizer_dir: Path) -> None:
    """`fastprep inspect DS | head` under `set -o pipefail` (as examples/finetune_chat.sh runs
    it): the reader leaving early is not an error (was: exit 1, "Broken pipe")."""
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(200)])
    out = tmp_path / "ds"
    assert main(["prepare", str(p), "--tokenizer", str(tokenizer_dir), "--seq-len", "512",
                 "--out", str(out), "--no-progress"]) == 0
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m fastprep inspect "
                        f"{out} --chars 100000 | true"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Broken pipe" not in r.stderr, r.stderr


def test_prepare_process_exit_keeps_atexit_output_and_status(tmp_path: Path, tokenizer_dir: Path) -> None:
    """A finished prepare skips the interpreter's finalisation (os._exit) but still runs atexit
    handlers, flushes its output and keeps the exit status (bug this guards: a fast exit that
    lost buffered stdout, or a benchmark's atexit report)."""
    good = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(50)])
    bad = tmp_path / "empty.jsonl"
    bad.write_bytes(b"")
    for data, rc, marker in ((good, 0, "dataset "), (bad, 2, "no dataset written")):
        code = ("import atexit, sys; atexit.register(lambda: print('atexit ran', file=sys.stderr)); "
                f"sys.argv = ['fastprep', 'prepare', {str(data)!r}, '--tokenizer', {str(tokenizer_dir)!r}, "
                f"'--out', {str(tmp_path / ('o' + str(rc)))!r}]; "
                "from fastprep.cli import main; sys.exit(main())")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == rc, r.stderr
        assert "atexit ran" in r.stderr and marker in (r.stdout + r.stderr)
