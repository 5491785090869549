"""The Ray executor (tasks, and the MinHash band shuffle) gives byte-identical datasets to the local
executor (local Ray, 2 CPUs)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import in_own_process, make_texts, run_in_own_process, write_jsonl
from fastprep import DedupeConfig, MinHashConfig, PackConfig, PrepareConfig, ReadConfig, TokenizeConfig, prepare

ray = pytest.importorskip("ray")


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_ray_executor_matches_local_executor_in_own_process() -> None:
    run_in_own_process("tests/integration/test_ray.py::test_ray_executor_matches_local_executor")


@in_own_process
def test_ray_executor_matches_local_executor(tmp_path: Path, tokenizer_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    texts = make_texts(400, seed=9, min_words=40, max_words=90)
    near = [t.replace(" alpha ", " ALPHA ", 1) for t in texts[:30]]
    # exact and near duplicates planted across different files and tasks
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts[:200]], raw_lines=[b"{bad"])
    write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in texts[200:] + texts[:20] + near])
    inputs = (str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"))

    def cfg(out: str, **kw) -> PrepareConfig:
        return PrepareConfig.of(read=ReadConfig(paths=inputs), tokenize=TokenizeConfig(tokenizer=str(tokenizer_dir)),
                             out=str(tmp_path / out), pack=PackConfig(seq_len=128), task_bytes=8000,
                             dedupe=DedupeConfig(minhash=MinHashConfig(threshold=0.8)), progress=False, **kw)

    local = prepare(cfg("local", workers=2))
    unchanged = sum(n == t for n, t in zip(near, texts))  # no " alpha " to change: an exact copy
    assert local.counts["exact_duplicates"] == 20 + unchanged
    assert local.counts["near_duplicates"] == 30 - unchanged
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        distributed = prepare(cfg("ray", executor="ray"))
        # relative input, tokenizer and output paths: Ray tasks run in another working folder,
        # so the driver resolves every path first (was: a traceback inside the tasks)
        monkeypatch.chdir(tmp_path)
        rel_tok = Path("tok")
        rel_tok.symlink_to(tokenizer_dir)
        relative = prepare(PrepareConfig.of(
            read=ReadConfig(paths=("a.jsonl", "b.jsonl")), tokenize=TokenizeConfig(tokenizer=str(rel_tok)),
            out="ray-rel", pack=PackConfig(seq_len=128), task_bytes=8000,
            dedupe=DedupeConfig(minhash=MinHashConfig(threshold=0.8)), progress=False, executor="ray"))
    finally:
        ray.shutdown()
    assert relative.counts == local.counts
    rel_hashes, ray_hashes = hashes(tmp_path / "ray-rel"), hashes(tmp_path / "ray")
    for name in ("manifest.json", "quarantine.jsonl"):  # they name the paths as given
        rel_hashes.pop(name), ray_hashes.pop(name)
    assert rel_hashes == ray_hashes
    assert distributed.counts == local.counts
    # under Ray the MinHash decisions come from the band shuffle run as Ray tasks, locally from
    # the driver's streaming index: the same removals either way
    assert (local.near_dedupe["method"], distributed.near_dedupe["method"]) == ("stream", "shuffle")
    assert distributed.near_dedupe["verified_pairs"] >= local.counts["near_duplicates"]
    assert hashes(tmp_path / "ray") == hashes(tmp_path / "local")
    q = [json.loads(x) for x in (tmp_path / "ray" / "quarantine.jsonl").read_text().splitlines()]
    assert [(Path(x["source"]).name, x["line"]) for x in q] == [("a.jsonl", 201)]
