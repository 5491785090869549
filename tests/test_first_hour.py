"""A new user's first hour (issue: every documented path works, nothing fails silently): the
real ``fastprep`` console script in a subprocess, bare tokenizer files built the way the
originals are (a tokenizer.json with ``<|endoftext|>`` as an added special token and nothing
beside it), and the mistakes a first run makes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_texts, write_jsonl
from fastprep import open_dataset


def cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The installed console script (what a user types), not ``python -m``."""
    script = Path(sys.executable).parent / "fastprep"
    exe = [str(script)] if script.exists() else [shutil.which("fastprep") or "fastprep"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def one_line_error(r: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x.startswith("fastprep: error")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def bare_tokenizer(folder: Path, specials: tuple[str, ...] = ("<|endoftext|>",)) -> Path:
    """GPT-2 / Qwen2 as published: a byte-level BPE tokenizer.json whose only special token is
    ``<|endoftext|>`` (an added token), no tokenizer_config.json or special_tokens_map.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(make_texts(800, seed=3), trainer=trainers.BpeTrainer(
        vocab_size=500, special_tokens=list(specials), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def segments(ds) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Every document piece of a dataset: (ids, loss mask)."""
    out = []
    for i in range(ds.rows):
        row = ds.row(i)
        seg = np.asarray(row["segment_ids"])
        for s in range(1, int(seg.max()) + 1):
            sel = seg == s
            mask = np.asarray(row["loss_mask"])[sel] if "loss_mask" in row else None
            out.append((np.asarray(row["input_ids"])[sel], mask))
    return out


# 1. a bare tokenizer.json: EOS inferred and said, or a stop naming the flag --------------------

def test_bare_tokenizer_json_gets_an_inferred_eos_after_every_document(tmp_path: Path) -> None:
    tok = bare_tokenizer(tmp_path / "gpt2")
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(40)]
                       + [{"prompt": f"q{i} alpha", "completion": f" a{i} beta"} for i in range(20)])
    r = cli("prepare", str(data), "--tokenizer", str(tok), "--seq-len", "256", "--out", str(tmp_path / "ds"))
    assert r.returncode == 0, r.stderr
    assert "EOS token '<|endoftext|>' (id 0) inferred" in r.stderr and "--eos-token" in r.stderr
    ds = open_dataset(tmp_path / "ds")
    assert ds.manifest.tokenizer["eos_id"] == 0 and ds.manifest.tokenizer["eos_token"] == "<|endoftext|>"
    pieces = segments(ds)
    assert len(pieces) == 60  # no document split at L = 256
    for ids, mask in pieces:
        assert ids[-1] == 0 and (ids == 0).sum() == 1  # one EOS, at the end
        if mask is not None and mask.sum() < len(mask):  # a completion: EOS is a target
            assert mask[-1] == 1
    # named on the command line, by string or by id: the same dataset
    for i, value in enumerate(("<|endoftext|>", "0")):
        r2 = cli("prepare", str(data), "--tokenizer", str(tok), "--seq-len", "256",
                 "--out", str(tmp_path / f"named{i}"), "--eos-token", value)
        assert r2.returncode == 0 and "inferred" not in r2.stderr, r2.stderr
        assert ((tmp_path / f"named{i}" / "shard-00000.input_ids.bin").read_bytes()
                == (tmp_path / "ds" / "shard-00000.input_ids.bin").read_bytes())


def test_no_eos_to_infer_stops_naming_the_flag(tmp_path: Path) -> None:
    tok = bare_tokenizer(tmp_path / "plain", specials=("[UNK]",))
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(10)])
    err = one_line_error(cli("prepare", str(data), "--tokenizer", str(tok), "--out", str(tmp_path / "o")))
    assert "defines no EOS token" in err and "--eos-token" in err
    assert not (tmp_path / "o" / "manifest.json").exists()
    err = one_line_error(cli("prepare", str(data), "--tokenizer", str(tok), "--out", str(tmp_path / "o"),
                             "--eos-token", "<|nope|>"))
    assert "--eos-token '<|nope|>': not a token" in err
    # an explicit choice to pack without an end token is allowed
    r = cli("prepare", str(data), "--tokenizer", str(tok), "--out", str(tmp_path / "o2"), "--eos", "never")
    assert r.returncode == 0, r.stderr


# 2. --tokenizer DIR/tokenizer.json and --tokenizer DIR ---------------------------------------

def test_tokenizer_file_and_its_folder_make_the_same_dataset(tmp_path: Path, tokenizer_dir: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(60)])
    base = ["prepare", str(data), "--seq-len", "128", "--tokenizer"]
    a = cli(*base, str(tokenizer_dir), "--out", str(tmp_path / "dir"))
    b = cli(*base, str(tokenizer_dir / "tokenizer.json"), "--out", str(tmp_path / "file"))
    assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
    ta, tb = (open_dataset(tmp_path / x).manifest.tokenizer for x in ("dir", "file"))
    assert {k: v for k, v in ta.items() if k != "source"} == {k: v for k, v in tb.items() if k != "source"}
    assert ta["add_bos"] and ta["bos_id"] is not None  # the folder's add_bos_token was read both times
    for p in (tmp_path / "dir").glob("shard-*"):
        assert p.read_bytes() == (tmp_path / "file" / p.name).read_bytes()
    # the same tokenizer.json alone resolves other settings: the resolved hash tells them apart
    (tmp_path / "bare").mkdir()
    shutil.copy(tokenizer_dir / "tokenizer.json", tmp_path / "bare")
    c = cli(*base, str(tmp_path / "bare" / "tokenizer.json"), "--out", str(tmp_path / "bare-ds"))
    assert c.returncode == 0, c.stderr
    tc = open_dataset(tmp_path / "bare-ds").manifest.tokenizer
    assert tc["sha256"] == ta["sha256"] and tc["resolved_sha256"] != ta["resolved_sha256"]


# 3. a script without a __main__ guard --------------------------------------------------------

def test_script_without_main_guard_fails_with_one_line_naming_the_guard(tmp_path: Path, tokenizer_dir: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(300)])
    script = tmp_path / "noguard.py"
    script.write_text(
        "import fastprep\n"
        "from fastprep import PrepareConfig, ReadConfig, TokenizeConfig\n"
        f"cfg = PrepareConfig.of(read=ReadConfig(paths=({str(data)!r},)), "
        f"tokenize=TokenizeConfig(tokenizer={str(tokenizer_dir)!r}), out={str(tmp_path / 'o')!r}, "
        "workers=2, task_bytes=4000)\n"
        "fastprep.prepare(cfg)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fastprep.pipeline.executor.WorkerDied") and 'if __name__ == "__main__":' in last
    # the workers exit quietly: no traceback of theirs, no second run started in them
    assert "bootstrapping phase" not in r.stderr and r.stderr.count("Traceback") == 1
    guarded = tmp_path / "guarded.py"
    body = script.read_text().replace("fastprep.prepare(cfg)\n", "")
    guarded.write_text(body + 'if __name__ == "__main__":\n    print(fastprep.prepare(cfg).counts["rows"])\n')
    r = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0 and int(r.stdout) > 0, r.stderr


# 4. inspect ---------------------------------------------------------------------------------

def test_inspect_rows_from_the_end_and_out_of_range(tmp_path: Path, tokenizer_dir: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(100)])
    assert cli("prepare", str(data), "--tokenizer", str(tokenizer_dir), "--seq-len", "64",
               "--out", str(tmp_path / "ds")).returncode == 0
    rows = open_dataset(tmp_path / "ds").rows
    last = cli("inspect", str(tmp_path / "ds"), "--row", "-1")
    same = cli("inspect", str(tmp_path / "ds"), "--row", str(rows - 1))
    assert last.returncode == 0 and last.stdout == same.stdout and f"row {rows - 1}:" in last.stdout
    err = one_line_error(cli("inspect", str(tmp_path / "ds"), "--row", "999999"))
    assert f"has {rows:,} rows" in err
    one_line_error(cli("inspect", str(tmp_path / "ds"), "--row", str(-rows - 1)))


# 5. runs that keep nothing -------------------------------------------------------------------

@pytest.mark.parametrize("case", ["empty", "invalid", "wrong_field"])
def test_a_run_that_keeps_nothing_exits_non_zero_with_the_cause(tmp_path: Path, tokenizer_dir: Path,
                                                               case: str) -> None:
    p = tmp_path / "d.jsonl"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "invalid":
        p.write_bytes(b"{oops\nnot json\n")
    else:
        write_jsonl(p, [{"content": t, "meta": 1} for t in make_texts(5)])
    err = one_line_error(cli("prepare", str(p), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "o")))
    assert "no dataset written" in err
    assert not (tmp_path / "o" / "manifest.json").exists()
    if case == "empty":
        assert "hold no records" in err
    elif case == "invalid":
        assert "2 of 2 were malformed_json" in err and str(tmp_path / "o" / "quarantine.jsonl") in err
        assert len((tmp_path / "o" / "quarantine.jsonl").read_text().splitlines()) == 2
    else:
        assert "fields present: content, meta" in err and "--text-field" in err


def test_sharegpt_conversations_are_chats(tmp_path: Path, tokenizer_dir: Path) -> None:
    recs = [{"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": t},
                               {"from": "gpt", "value": "answer " + t}]} for t in make_texts(30)]
    data = write_jsonl(tmp_path / "sg.jsonl", recs)
    r = cli("prepare", str(data), "--tokenizer", str(tokenizer_dir), "--seq-len", "512", "--out", str(tmp_path / "ds"))
    assert r.returncode == 0, r.stderr
    m = open_dataset(tmp_path / "ds").manifest
    assert m.counts["documents_by_shape"] == {"chat": 30} and m.counts["dropped_total"] == 0
    assert 0 < m.counts["target_tokens"] < m.counts["tokens"]  # loss on the assistant turns only


# 7. progress and --quiet ---------------------------------------------------------------------

def test_progress_bar_when_asked_quiet_when_piped_or_quiet(tmp_path: Path, tokenizer_dir: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(3000, max_words=120)])
    common = ["prepare", str(data), "--tokenizer", str(tokenizer_dir), "--seq-len", "256",
              "--task-bytes", "50000", "--workers", "2"]
    shown = cli(*common, "--out", str(tmp_path / "a"), "--progress")
    assert shown.returncode == 0, shown.stderr
    bar = shown.stderr.replace("\r", "\n")
    assert "prepare:" in bar and "100%" in bar and "B/s" in bar  # input bytes, percentage, rate
    assert "docs/s" in bar and "MB/s text" in bar and "tok/s" in bar and "write:" in bar
    piped = cli(*common, "--out", str(tmp_path / "b"))  # stderr is a pipe here: no bar
    assert piped.returncode == 0 and "prepare:" not in piped.stderr and "records read" in piped.stdout
    quiet = cli(*common, "--out", str(tmp_path / "c"), "--quiet", "--progress")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


# 8. --seq-len above the model's maximum; efficiency warning -----------------------------------

def test_seq_len_above_the_model_maximum_is_refused(tmp_path: Path, tokenizer_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tokenizer_dir, model)
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 512}))
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(50)])
    base = ["prepare", str(data), "--tokenizer", str(model)]
    err = one_line_error(cli(*base, "--seq-len", "10000000", "--out", str(tmp_path / "o")))
    assert "longer than the model's maximum of 512" in err and "max_position_embeddings in config.json" in err
    assert cli(*base, "--seq-len", "512", "--out", str(tmp_path / "ok")).returncode == 0
    assert cli(*base, "--seq-len", "1024", "--exceed-model-max", "--out", str(tmp_path / "ext")).returncode == 0
    # transformers' "no limit" value is not a limit
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    # a config.json that is not a model's (no model_type/architectures) says nothing
    (model / "config.json").write_text(json.dumps({"seq_length": 128, "lr": 1e-4}))
    assert cli(*base, "--seq-len", "1024", "--out", str(tmp_path / "cfg")).returncode == 0
    (model / "config.json").unlink()
    (model / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": int(1e30)}))
    assert cli(*base, "--seq-len", "4096", "--out", str(tmp_path / "big")).returncode == 0
    (model / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 256}))
    err = one_line_error(cli(*base, "--seq-len", "512", "--out", str(tmp_path / "o")))
    assert "model_max_length in tokenizer_config.json" in err


def test_low_packing_efficiency_is_a_warning_even_when_quiet(tmp_path: Path, tokenizer_dir: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(50, max_words=10)])
    r = cli("prepare", str(data), "--tokenizer", str(tokenizer_dir), "--seq-len", "4096", "--pack", "pad",
            "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 0 and r.stdout == ""
    assert "warning: packing efficiency is" in r.stderr and "--pack bfd" in r.stderr
    ok = cli("prepare", str(data), "--tokenizer", str(tokenizer_dir), "--seq-len", "64",
             "--out", str(tmp_path / "o2"))
    assert "warning" not in ok.stderr


# 9. the summary ------------------------------------------------------------------------------

def test_summary_counts_repairs_by_kind_and_names_the_quarantine(tmp_path: Path, tokenizer_dir: Path) -> None:
    texts = make_texts(40)
    p = tmp_path / "d.jsonl"
    with open(p, "wb") as f:
        f.write(b"\xef\xbb\xbf")  # a byte-order mark before the first record
        for i, t in enumerate(texts):
            t = t.replace(" ", "\r\n", 1) if i < 7 else t  # 7 records with CRLF
            t = t + "\x07" if i in (3, 20) else t         # 2 with a control character
            t = "  " + t if i >= 35 else t                # 5 with outer whitespace
            f.write(json.dumps({"text": t}).encode() + b"\n")
        f.write(b"{broken\n")
    r = cli("prepare", str(p), "--tokenizer", str(tokenizer_dir), "--seq-len", "128", "--out", str(tmp_path / "ds"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "{" not in out and "}" not in out and "Counter" not in out  # no Python reprs
    repaired = next(x for x in out.splitlines() if x.startswith("repaired"))
    assert "CRLF/CR newlines 7" in repaired and "control characters 2" in repaired
    assert "outer whitespace 5" in repaired and "byte-order mark 1" in repaired
    dropped = next(x for x in out.splitlines() if x.startswith("dropped"))
    assert "malformed_json 1" in dropped and str(tmp_path / "ds" / "quarantine.jsonl") in dropped
    assert "MB/s of text" in out
    m = open_dataset(tmp_path / "ds").manifest
    assert m.counts["repaired"] == {"newlines": 7, "control": 2, "strip": 5, "bom": 1}
    assert m.counts["text_bytes"] == m.counts["text_chars"] > 0  # ASCII text: a byte per character


def test_summary_after_a_resume_reports_the_whole_run(tmp_path: Path, tokenizer_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import fastprep.dataset.write as w
    from fastprep.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(400)], raw_lines=[b"{x"])
    args = ["prepare", str(data), "--tokenizer", str(tokenizer_dir), "--seq-len", "64",
            "--task-bytes", "4000", "--workers", "1"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    fresh = capsys.readouterr().out

    def full_disk(self, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(w.ShardWriter, "add", full_disk)
    assert main([*args, "--out", str(tmp_path / "ds")]) == 1  # 11. names the folder, says resume
    err = capsys.readouterr().err
    assert str(tmp_path / "ds") in err and "No space left on device" in err
    assert "run the same command again" in err
    monkeypatch.undo()
    assert main([*args, "--out", str(tmp_path / "ds")]) == 0
    captured = capsys.readouterr()
    assert "resumed an interrupted run" in captured.err
    resumed = captured.out

    def counts(summary: str) -> list[str]:  # every line but the timing and the folder
        return [x for x in summary.splitlines() if not x.startswith(("time", "dataset", "dropped"))]

    assert counts(resumed) == counts(fresh)
    assert "tasks resumed from an interrupted run" in resumed


def test_interrupt_says_that_rerunning_resumes(tmp_path: Path, tokenizer_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import fastprep.pipeline.run as run
    from fastprep.cli import main

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "prepare", interrupted)
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha"}])
    assert main(["prepare", str(data), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "o")]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


# 10. the dedupe report -----------------------------------------------------------------------

def test_dedupe_report_lists_exact_and_near_copies_with_ids_and_excerpts(tmp_path: Path,
                                                                       tokenizer_dir: Path) -> None:
    base = make_texts(60, seed=11, min_words=40, max_words=60)
    recs = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(base)]
    near = base[5].split()
    near[3] = "CHANGED"
    recs.append({"id": "near-of-5", "text": " ".join(near)})  # line 61: near copy of line 6
    recs.append({"id": "copy-of-2", "text": base[2]})         # line 62: exact copy of line 3
    recs.append({"text": base[59]})                           # line 63: exact copy, no id
    a = write_jsonl(tmp_path / "a.jsonl", recs)
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "b1", "text": base[0]}])  # copy across files
    want = {(str(a), 61, "near", str(a), 6), (str(a), 62, "exact", str(a), 3),
            (str(a), 63, "exact", str(a), 60), (str(b), 1, "exact", str(a), 1)}
    reports = []
    for k, extra in enumerate((["--workers", "1"], ["--workers", "2", "--task-bytes", "3000"])):
        report = tmp_path / f"report{k}.jsonl"
        r = cli("prepare", str(a), str(b), "--tokenizer", str(tokenizer_dir), "--dedupe", "minhash",
                "--out", str(tmp_path / f"ds{k}"), "--dedupe-report", str(report), *extra)
        assert r.returncode == 0, r.stderr
        rows = [json.loads(x) for x in report.read_text().splitlines()]
        assert {(x["source"], x["line"], x["kind"], x["matched_source"], x["matched_line"])
                for x in rows} == want
        by_line = {(x["source"], x["line"]): x for x in rows}
        near_row = by_line[(str(a), 61)]
        assert near_row["id"] == "near-of-5" and near_row["matched_id"] == "doc-5"
        assert 0.8 <= near_row["similarity"] < 1
        assert near_row["excerpt"].startswith(" ".join(near[:4])) and near_row["matched_excerpt"].startswith(base[5][:30])
        exact_row = by_line[(str(a), 62)]
        assert exact_row["similarity"] == 1.0 and exact_row["matched_id"] == "doc-2"
        assert "id" not in by_line[(str(a), 63)] and by_line[(str(a), 63)]["matched_id"] == "doc-59"
        assert by_line[(str(b), 1)]["id"] == "b1" and by_line[(str(b), 1)]["matched_id"] == "doc-0"
        reports.append(report.read_bytes())
    assert reports[0] == reports[1]  # whatever the workers and task boundaries
    # exact deduplication alone reports its copies too
    r = cli("prepare", str(a), str(b), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "ex"),
            "--dedupe-report", str(tmp_path / "ex.jsonl"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "ex.jsonl").read_text().splitlines()]
    assert {(x["line"], x["matched_line"]) for x in rows} == {(62, 3), (63, 60), (1, 1)}


# 13. a chat template that fails on every record ---------------------------------------------

def test_template_failing_on_every_chat_is_a_config_error(tmp_path: Path, tokenizer_dir: Path) -> None:
    tpl = tmp_path / "bad.jinja"
    tpl.write_text("{% for m in messages %}{{ raise_exception('roles must alternate') }}{% endfor %}")
    recs = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}]}
            for t in make_texts(20)]
    data = write_jsonl(tmp_path / "c.jsonl", recs)
    err = one_line_error(cli("prepare", str(data), "--tokenizer", str(tokenizer_dir), "--out",
                             str(tmp_path / "o"), "--chat-template", str(tpl)))
    assert "fails on the first 20 chat records" in err and str(tpl) in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("shard-*"))


# 6. --strict stops at once, CLI view (the mechanism: tests/pipeline/test_executor.py) --------

def test_strict_names_the_first_bad_line_in_input_order(tmp_path: Path, tokenizer_dir: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in make_texts(400)], raw_lines=[b"{bad"])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "x"}], raw_lines=[b"{also bad"])
    err = one_line_error(cli("prepare", str(a), str(b), "--tokenizer", str(tokenizer_dir), "--out",
                             str(tmp_path / "o"), "--strict", "--workers", "2", "--task-bytes", "3000"))
    assert f"{a}:401" in err


def test_report_after_resuming_a_run_that_had_none(tmp_path: Path, tokenizer_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks saved by a run without --dedupe-report hold no ids or excerpts: a resumed run
    with the report reruns them (bug caught: the report read document files that were never
    written and the run crashed at its end)."""
    import fastprep.dataset.write as w
    from fastprep.cli import main

    texts = make_texts(300, seed=5, min_words=20)
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts + texts[:3])])
    args = ["prepare", str(data), "--tokenizer", str(tokenizer_dir), "--task-bytes", "5000",
            "--workers", "1", "--out", str(tmp_path / "ds")]

    def full_disk(self, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(w.ShardWriter, "add", full_disk)
    assert main(args) == 1
    monkeypatch.undo()
    report = tmp_path / "r.jsonl"
    assert main([*args, "--dedupe-report", str(report)]) == 0
    rows = [json.loads(x) for x in report.read_text().splitlines()]
    assert [(r["line"], r["id"], r["matched_line"], r["matched_id"]) for r in rows] == \
        [(301, 300, 1, 0), (302, 301, 2, 1), (303, 302, 3, 2)]
    assert all(r["excerpt"] == r["matched_excerpt"] != "" for r in rows)


def test_report_names_the_kept_document_at_the_end_of_a_chain(tmp_path: Path, tokenizer_dir: Path) -> None:
    """What a removed document matched may itself be removed: a copy inside task 2 whose first
    occurrence there copies task 1's document; an exact copy of a document MinHash removed.
    The report names the kept one (bug caught: it named documents absent from the dataset)."""
    base = make_texts(30, seed=21, min_words=40, max_words=60)
    near = base[4].split()
    near[2] = "CHANGED"
    near = " ".join(near)
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": t} for i, t in enumerate(base)]
                    + [{"id": "near4", "text": near}])                    # a:31 near a:5
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "b1", "text": base[7]},   # b:1 exact a:8
                                           {"id": "b2", "text": "fresh words " * 20},
                                           {"id": "b3", "text": base[7]},   # b:3 exact b:1 -> a:8
                                           {"id": "b4", "text": near}])     # b:4 exact a:31 -> a:5
    report = tmp_path / "r.jsonl"
    r = cli("prepare", str(a), str(b), "--tokenizer", str(tokenizer_dir), "--dedupe", "minhash",
            "--out", str(tmp_path / "ds"), "--dedupe-report", str(report))
    assert r.returncode == 0, r.stderr
    rows = {(Path(x["source"]).name, x["line"]): x for x in map(json.loads, report.read_text().splitlines())}
    ends = {k: (Path(x["matched_source"]).name, x["matched_line"], x["matched_id"], x["kind"])
            for k, x in rows.items()}
    assert ends == {("a.jsonl", 31): ("a.jsonl", 5, "a4", "near"),
                    ("b.jsonl", 1): ("a.jsonl", 8, "a7", "exact"),
                    ("b.jsonl", 3): ("a.jsonl", 8, "a7", "exact"),
                    ("b.jsonl", 4): ("a.jsonl", 5, "a4", "exact")}
    assert rows[("b.jsonl", 4)]["similarity"] == rows[("a.jsonl", 31)]["similarity"] < 1
    assert rows[("b.jsonl", 3)]["similarity"] == 1.0


def test_report_resumed_with_another_id_field_rereads_the_ids(tmp_path: Path, tokenizer_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import fastprep.dataset.write as w
    from fastprep.cli import main

    texts = make_texts(200, seed=8, min_words=20)
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": f"i{k}", "uuid": f"u{k}", "text": t}
                                              for k, t in enumerate(texts + texts[:2])])
    report = tmp_path / "r.jsonl"
    args = ["prepare", str(data), "--tokenizer", str(tokenizer_dir), "--task-bytes", "4000",
            "--workers", "1", "--out", str(tmp_path / "ds"), "--dedupe-report", str(report)]

    def full_disk(self, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(w.ShardWriter, "add", full_disk)
    assert main([*args, "--id-field", "id"]) == 1
    monkeypatch.undo()
    assert main([*args, "--id-field", "uuid"]) == 0
    rows = [json.loads(x) for x in report.read_text().splitlines()]
    assert [(r["id"], r["matched_id"]) for r in rows] == [("u200", "u0"), ("u201", "u1")]


def test_main_script_guard_detection(tmp_path: Path) -> None:
    """The hint names a missing guard only for a script that really has none: not for
    ``python -m pkg`` (whose __main__ multiprocessing never re-runs) nor for a script that
    merely mentions __main__."""
    probe = "from fastprep.pipeline.executor import main_script_without_guard as g; print(g())\n"
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(probe)
    (tmp_path / "mentions.py").write_text("# see __main__ below\n" + probe)
    (tmp_path / "guarded.py").write_text('if __name__ == "__main__":\n    ' + probe)

    def out(*args: str) -> str:
        r = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert out("-m", "pkg") == "None"
    assert out("guarded.py") == "None"
    assert out("mentions.py") == str(tmp_path / "mentions.py")


def test_a_killed_worker_is_one_line_and_the_rerun_resumes(tmp_path: Path, tokenizer_dir: Path) -> None:
    """SIGKILL one worker process mid-run (as the OOM killer does): one line, exit 1, the
    finished tasks kept (bug caught: the broken pool's error-setting thread died on a future
    cancelled meanwhile, and the run hung forever)."""
    import signal
    import time

    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(30000, max_words=80)])
    args = ["prepare", str(data), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "ds"),
            "--workers", "2", "--task-bytes", "200000", "--tokenizer-backend", "hf"]
    script = Path(sys.executable).parent / "fastprep"
    proc = subprocess.Popen([str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def workers() -> list[int]:
        out = []
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and f"PPid:\t{proc.pid}\n" in (p / "status").read_text():
                    if b"spawn_main" in (p / "cmdline").read_bytes():
                        out.append(int(p.name))
            except OSError:
                continue
        return out

    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "ds" / ".fastprep-work").is_dir():
        time.sleep(0.05)
    while time.time() < deadline and not list((tmp_path / "ds" / ".fastprep-work").glob("task-*.json")):
        time.sleep(0.05)  # a first task finished: there is something to resume
    pids = workers()
    assert pids and proc.poll() is None, "the run ended before a worker could be killed"
    os.kill(pids[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "a worker process died" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    r = cli(*args)
    assert r.returncode == 0 and "resumed an interrupted run" in r.stderr, r.stderr
