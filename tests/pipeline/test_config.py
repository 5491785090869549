"""The root config and the CLI derived from it: defaults written once, flags that reach their
field, deprecated spellings that still work with a warning, and the recipe/run split."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from fastprep import (CleanConfig, DedupeConfig, MinHashConfig, PackConfig, PrepareConfig,
                      ReadConfig, Recipe, RunOptions, TokenizeConfig)
from fastprep.cli import build_parser, config_from_args
from fastprep.flags import flag_name
from fastprep.stages.records import RecordConfig


def parse(*args: str) -> PrepareConfig:
    ns = build_parser().parse_args(["prepare", "in.jsonl", "--tokenizer", "tok", "--out", "o", *args])
    return config_from_args(ns)


def test_no_flags_give_the_dataclass_defaults() -> None:
    """A default written a second time in the CLI would drift from the config's (the review
    found --seq-len 2048 in six places): parsing nothing must give exactly the defaults."""
    assert parse() == PrepareConfig.of(read=ReadConfig(paths=("in.jsonl",)),
                                       tokenize=TokenizeConfig(tokenizer="tok"), out="o")
    assert parse("--dedupe", "minhash").recipe.dedupe == DedupeConfig(minhash=MinHashConfig())


def test_every_field_has_a_flag_that_reaches_it() -> None:
    cfg = parse("--seq-len", "77", "--pack", "concat", "--long-docs", "truncate", "--no-shuffle",
                "--seed", "3", "--text-field", "body", "--fill", "a=b", "--fill", "c=",
                "--keep-control", "--no-strip", "--unicode", "NFKC", "--max-chars", "9",
                "--dedupe", "minhash", "--threshold", "0.7", "--bands", "10", "--band-rows", "3",
                "--minhash-seed", "5", "--verify", "signature", "--workers", "3", "--no-progress",
                "--shard-rows", "11", "--near-method", "shuffle", "--bos", "never")
    r, run = cfg.recipe, cfg.run
    assert r.pack == PackConfig(seq_len=77, mode="concat", long_policy="truncate", shuffle=False, seed=3)
    assert r.records == RecordConfig(text_field="body", defaults=(("a", "b"), ("c", "")))
    assert r.clean == CleanConfig(unicode="NFKC", strip_control=False, strip=False, max_chars=9)
    assert r.dedupe.minhash == MinHashConfig(threshold=0.7, bands=10, band_rows=3, seed=5,
                                             verify="signature")
    assert r.shard_rows == 11 and r.tokenize.bos == "never"
    assert (run.workers, run.progress, run.near_method) == (3, False, "shuffle")
    # and no config field lacks a flag (except those kept off the command line on purpose)
    text = build_parser().parse_args(["prepare", "x", "--tokenizer", "t", "--out", "o"])
    assert text.command == "prepare"
    for cls in (ReadConfig, RecordConfig, CleanConfig, PackConfig, TokenizeConfig, MinHashConfig,
                RunOptions):
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli") and not f.metadata.get("positional"):
                assert flag_name(f) in build_parser()._subparsers._group_actions[0].choices[
                    "prepare"].format_help(), (cls.__name__, f.name)


def test_deprecated_flags_still_work_and_warn(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse("--dedupe", "minhash", "--bands", "16", "--rows", "8")
    assert cfg.recipe.dedupe.minhash.band_rows == 8
    assert "--rows is deprecated" in capsys.readouterr().err
    # --seed seeded MinHash too before --minhash-seed: kept for one release, with a warning
    cfg = parse("--dedupe", "minhash", "--seed", "4")
    assert cfg.recipe.dedupe.minhash.seed == 4 and cfg.recipe.pack.seed == 4
    assert "--minhash-seed" in capsys.readouterr().err
    cfg = parse("--dedupe", "minhash", "--seed", "4", "--minhash-seed", "9")
    assert (cfg.recipe.dedupe.minhash.seed, cfg.recipe.pack.seed) == (9, 4)
    assert capsys.readouterr().err == ""


def test_recipe_and_run_options_are_split_by_what_they_decide() -> None:
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    run_fields = {f.name for f in dataclasses.fields(RunOptions)}
    assert not recipe_fields & run_fields
    assert {"workers", "executor", "task_bytes", "batch_bytes", "out", "progress"} <= run_fields
    cfg = PrepareConfig.of(read=ReadConfig(paths=("x",)), tokenize=TokenizeConfig(tokenizer="t"),
                           out="o", workers=7, shard_rows=5)
    assert cfg.run.workers == 7 and cfg.recipe.shard_rows == 5
    assert "workers" not in str(cfg.recipe.record())
    with pytest.raises(TypeError, match="unknown field.*wokers"):
        PrepareConfig.of(read=ReadConfig(paths=("x",)), tokenize=TokenizeConfig(tokenizer="t"),
                         out="o", wokers=2)
    with pytest.raises(ValueError, match="--dedupe-report needs deduplication"):
        PrepareConfig.of(read=ReadConfig(paths=("x",)), tokenize=TokenizeConfig(tokenizer="t"),
                         out="o", dedupe_report="r.jsonl", dedupe=DedupeConfig(exact=False))
    # exact deduplication alone has copies to report
    PrepareConfig.of(read=ReadConfig(paths=("x",)), tokenize=TokenizeConfig(tokenizer="t"),
                     out="o", dedupe_report="r.jsonl")


def test_fingerprint_ignores_run_options_and_follows_the_recipe(tmp_path: Path,
                                                               tokenizer_dir: Path) -> None:
    from fastprep.pipeline.outdir import fingerprint
    from fastprep.stages.tokenize import TokenizerBundle

    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "x"}\n')
    spec = TokenizerBundle(TokenizeConfig(tokenizer=str(tokenizer_dir))).spec

    def fp(**kw) -> str:
        cfg = PrepareConfig.of(read=ReadConfig(paths=(str(src),)),
                               tokenize=TokenizeConfig(tokenizer=str(tokenizer_dir)), **kw)
        return fingerprint(cfg, [str(src)], spec)

    base = fp(out="o")
    assert fp(out="elsewhere", workers=5, batch_bytes=7, progress=True) == base
    assert fp(out="o", pack=PackConfig(seq_len=99)) != base
    assert fp(out="o", shard_rows=3) != base


def test_help_lists_defaults_once() -> None:
    sub = argparse.ArgumentParser()
    from fastprep.flags import add_options

    add_options(sub, PackConfig)
    text = sub.format_help()
    assert "--seq-len SEQ_LEN row length L in tokens (default: 2048)" in " ".join(text.split())
