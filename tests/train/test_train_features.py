"""Training defaults, validation, the exported model folder, readable log lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_loop import cfg, make_dataset, quiet  # noqa: E402

from conftest import make_texts, prep_config, write_jsonl  # noqa: E402
from fastprep.train.config import TrainConfig  # noqa: E402
from fastprep.train.loop import train  # noqa: E402


def test_gentle_defaults() -> None:
    """Bug caught: 100 fixed warm-up steps (a 20-step run never reached its peak lr) and one
    peak lr for random weights and pretrained models alike."""
    c = TrainConfig(data="ds")
    assert c.peak_lr() == 3e-4 and c.warmup(20) == 1 and c.warmup(1000) == 50
    assert TrainConfig(data="ds", model="some/folder").peak_lr() == 2e-5
    assert TrainConfig(data="ds", lr=1e-3).peak_lr() == 1e-3
    assert TrainConfig(data="ds", warmup_steps=7).warmup(1000) == 7
    assert TrainConfig(data="ds", warmup_ratio=0.0).warmup(1000) == 0
    with pytest.raises(ValueError, match="--warmup-ratio"):
        TrainConfig(data="ds", warmup_ratio=1.5)


def test_short_run_reaches_its_peak_lr(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds")
    logged: list[dict[str, Any]] = []
    train(cfg(data, tmp_path / "run", warmup_steps=-1, warmup_ratio=0.3, max_steps=10, log_every=1,
              lr=1e-3), log=logged.append)
    lrs = [r["lr"] for r in logged if "lr" in r]
    assert max(lrs) == pytest.approx(1e-3) and lrs[0] < 1e-3


def test_validation_loss_every_n_steps_and_at_the_end(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds")
    val = make_dataset(tmp_path / "val", docs=60, seed=9)
    logged: list[dict[str, Any]] = []
    stats = train(cfg(data, tmp_path / "run", val_data=str(val), eval_every=2, max_steps=5),
                  log=logged.append)
    vals = [r for r in logged if "val_loss" in r]
    assert [r["step"] for r in vals] == [2, 4, 5] == [v["step"] for v in stats["validation"]]
    assert all(r["val_ppl"] == pytest.approx(torch.tensor(r["val_loss"]).exp().item()) for r in vals)
    # every target of the validation set, each pass
    from fastprep.train.loader import PackedLoader, PackedRows

    want = sum(b["n_targets"] for b in PackedLoader(PackedRows(val), 2, shuffle=False,
                                                    drop_last=False, num_workers=0))
    assert {r["val_targets"] for r in vals} == {want}


def test_validation_data_must_share_the_tokenizer(tmp_path: Path, tokenizer_dir: Path) -> None:
    data = make_dataset(tmp_path / "ds")
    from fastprep.pipeline.run import prepare

    p = write_jsonl(tmp_path / "v.jsonl", [{"text": t} for t in make_texts(30)])
    prepare(prep_config([p], tmp_path / "val", tokenizer_dir, seq_len=64))
    with pytest.raises(ValueError, match="another tokenizer"):
        train(cfg(data, tmp_path / "run", val_data=str(tmp_path / "val")), log=quiet)


def test_exported_model_folder_loads_with_its_tokenizer(tmp_path: Path, tokenizer_dir: Path) -> None:
    import transformers

    from fastprep.pipeline.run import prepare

    p = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(120)])
    prepare(prep_config([p], tmp_path / "ds", tokenizer_dir, seq_len=64))
    train(cfg(tmp_path / "ds", tmp_path / "run", max_steps=2, export=True), log=quiet)
    folder = tmp_path / "run" / "model"
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    text = "alpha beta gamma delta."
    assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text, add_special_tokens=False).ids
    assert tok.eos_token == "</s>" and model.get_input_embeddings().weight.shape[0] >= ref.get_vocab_size()


def test_log_lines_are_for_people(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "ds")
    train(cfg(data, tmp_path / "run", max_steps=2, log_every=1, val_data=str(data)))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("step      1  loss ") and "tok/s" in out[0] and "{" not in out[0]
    assert any("val loss" in line and "ppl" in line for line in out)
    assert (tmp_path / "run" / "log.jsonl").read_text().count("\n") == 3  # JSON stays there


def test_activation_checkpointing_gives_the_same_losses(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds")
    plain = train(cfg(data, tmp_path / "a", max_steps=3), log=quiet)
    ckpt = train(cfg(data, tmp_path / "b", max_steps=3, activation_checkpointing=True), log=quiet)
    assert ckpt["losses"] == pytest.approx(plain["losses"], rel=1e-5, abs=1e-6)


def _mixed(tmp_path: Path, tokenizer_dir: Path) -> Path:
    """A two-source mix with a validation set: source "a" plain words, "b" the same words
    upper-cased (another token distribution, so the two losses differ)."""
    from fastprep import PrepareConfig, prepare
    from fastprep.stages.mix import MixConfig, Source, SplitConfig

    a = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in make_texts(300, seed=1)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": t.upper()} for t in make_texts(300, seed=2)])
    mix = MixConfig(sources=(Source("a", (str(a),), 0.5), Source("b", (str(b),), 0.5)))
    c = prep_config([a, b], tmp_path / "ds", tokenizer_dir, seq_len=64, mix=mix,
                    split=SplitConfig(fraction=0.1))
    prepare(PrepareConfig(recipe=c.recipe, run=c.run))
    return tmp_path / "ds"


def test_validation_loss_per_source(tmp_path: Path, tokenizer_dir: Path) -> None:
    """A mix's rows carry their source: the validation loss is reported per source, and the
    target-weighted mean of the sources' losses is the overall loss (each row counted once,
    in the source its `source` array names)."""
    from fastprep.train.loader import PackedLoader, PackedRows

    ds = _mixed(tmp_path, tokenizer_dir)
    logged: list[dict[str, Any]] = []
    train(cfg(ds, tmp_path / "run", val_data=str(ds / "val"), eval_every=2, max_steps=2),
          log=logged.append)
    rec = next(r for r in logged if "val_loss" in r)
    by = rec["val_loss_by_source"]
    assert set(by) == {"a", "b"} and by["a"] != by["b"]
    rows = PackedRows(ds / "val")
    per = {0: 0, 1: 0}
    for batch in PackedLoader(rows, 2, shuffle=False, drop_last=False, num_workers=0):
        for s, lab in zip(batch["source"].tolist(), batch["labels"]):
            per[s] += int((lab != -100).sum())
    assert per[0] and per[1] and per[0] + per[1] == rec["val_targets"]
    mean = (by["a"] * per[0] + by["b"] * per[1]) / rec["val_targets"]
    assert mean == pytest.approx(rec["val_loss"], rel=1e-6)
