"""``fastprep report``: every figure drawn from the right numbers (the JSON compared with the
manifest and with slow recomputations from the arrays and the decoded rows), one
self-contained, escaped HTML page that headless Chromium renders, and one-line errors."""

from __future__ import annotations

import base64
import collections
import html as htmllib
import itertools
import json
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_texts, write_jsonl

from fastprep.cli import main
from fastprep.dataset.format import DOCUMENT_DTYPE, open_dataset, read_documents
from fastprep.dataset.write import ShardWriter
from fastprep.report.load import (
    NO_DOCUMENTS,
    NO_DOCUMENTS_VAL,
    NO_TOKENIZER,
    sample_rows,
)
from fastprep.stages.records import KIND_NAMES

pytest.importorskip("matplotlib")

L = 64
HOSTILE = 'alpha <script>alert("x")</script> & beta </script><!-- gamma'
SCRIPTS = ["αβγ δέλτα λόγος Привет мир 日本語 テキスト 한국어 alpha 42",
           "Ελληνικά κείμενα και Русский текст 中文 カタカナ 조선말 beta 7",
           "ωμέγα σίγμα Москва 漢字 ソフト 서울 gamma 1999 epsilon"]
TERMS = ["# a comment line", "", "alpha", "THE", "a", "ta", "  omega  ", ".", "Привет", "alpha",
         "</script>", "alpha.", "ta."]


def corpus(tmp: Path) -> tuple[Path, Path]:
    """Two sources: web text (long documents, exact and near duplicates, hostile HTML, several
    scripts) and instruction data (prompt/completion and chat records)."""
    texts = make_texts(150, seed=1)
    longs = make_texts(3, seed=2, min_words=150, max_words=200)
    near = [t + " omega" for t in make_texts(6, seed=3, min_words=50, max_words=60)]
    web = texts + longs + texts[:5] + [texts[7]] * 3 + near + make_texts(6, seed=3, min_words=50, max_words=60)
    web += [HOSTILE] * 3 + [HOSTILE.replace("alpha", "zeta eta"), *SCRIPTS]
    a = write_jsonl(tmp / "web.jsonl", [{"text": t, "id": f"w{i}"} for i, t in enumerate(web)])
    qa = make_texts(80, seed=4, max_words=20)
    recs: list[Any] = [{"prompt": f"Q: {q}\nA:", "completion": f" {qa[-i - 1]}"} for i, q in enumerate(qa[:40])]
    recs += [{"messages": [{"role": "user", "content": q},
                           {"role": "assistant", "content": qa[-i - 1]}]} for i, q in enumerate(qa[40:])]
    b = write_jsonl(tmp / "sft.jsonl", recs)
    return a, b


def prepare(args: list[str]) -> None:
    assert main(["prepare", *args, "--quiet", "--no-progress", "--workers", "1"]) == 0


def decode_all(ds_path: Path, tokenizer: Any) -> list[list[str]]:
    """Every row's documents as text (special tokens skipped), by a plain loop."""
    ds = open_dataset(ds_path)
    out = []
    for r in range(ds.rows):
        row = ds.row(r)
        ids, seg = row["input_ids"].tolist(), row["segment_ids"].tolist()
        docs: dict[int, list[int]] = {}
        for i, s in zip(ids, seg):
            if s:
                docs.setdefault(s, []).append(i)
        out.append([tokenizer.decode(docs[s], skip_special_tokens=True) for s in sorted(docs)])
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path, tokenizer: Any) -> dict[str, Any]:
    """A mixed dataset (two sources, a validation set, MinHash with a dedupe report) and its
    report (HTML, PNGs, JSON) with flag terms, a row sample smaller than the dataset and the
    row that holds the hostile document rendered."""
    tmp = tmp_path_factory.mktemp("report")
    a, b = corpus(tmp)
    ds, dd = tmp / "ds", tmp / "dedupe.jsonl"
    prepare(["--mix", f"{a}=0.7", f"{b}=0.3", "--tokenizer", str(tokenizer_dir), "--seq-len", str(L),
             "--out", str(ds), "--dedupe", "minhash", "--dedupe-report", str(dd), "--val-fraction", "0.1"])
    texts = decode_all(ds, tokenizer)
    hostile_row = next(r for r, docs in enumerate(texts) if any("<script>" in t for t in docs))
    terms = tmp / "terms.txt"
    terms.write_text("\n".join(TERMS) + "\n", encoding="utf-8")
    html, js, png = tmp / "report.html", tmp / "figures.json", tmp / "png"
    assert main(["report", str(ds), "--out", str(html), "--json", str(js), "--png-dir", str(png),
                 "--flag-terms", str(terms), "--dedupe-report", str(dd), "--sample-rows", "40",
                 "--row", str(hostile_row), "--quiet"]) == 0
    return {"ds": ds, "dedupe": dd, "html": html, "json": json.loads(js.read_text()), "png": png,
            "texts": texts, "hostile_row": hostile_row, "terms": terms, "tmp": tmp}


def slow_rows(ds_path: Path) -> list[dict[str, int]]:
    """Per row, by a plain Python loop: real tokens, documents, loss-mask ones, learned
    positions (follows a token of its own document, loss mask 1)."""
    ds = open_dataset(ds_path)
    out = []
    for r in range(ds.rows):
        row = ds.row(r)
        seg = row["segment_ids"].tolist()
        mask = row["loss_mask"].tolist() if "loss_mask" in row else [1] * len(seg)
        out.append({"real": sum(1 for s in seg if s), "docs": len({s for s in seg if s}),
                    "ones": sum(1 for s, m in zip(seg, mask) if s and m),
                    "learned": sum(1 for t in range(1, len(seg))
                                   if seg[t] and seg[t] == seg[t - 1] and mask[t])})
    return out


def test_counts_figure_is_the_manifest_and_the_dedupe_report(mixed: dict[str, Any]) -> None:
    m = json.loads((mixed["ds"] / "manifest.json").read_text())
    c, f = m["counts"], mixed["json"]["counts"]
    for key in ("records_read", "records_kept", "dropped", "dropped_total", "repaired",
                "exact_duplicates", "near_duplicates", "documents_by_shape"):
        assert f[key] == c[key], key
    assert f["exact_duplicates"] >= 5 and f["near_duplicates"] >= 1  # guard: the corpus planted them
    assert f["contaminated"] == c["dropped"].get("contaminated", 0)
    lines = [json.loads(x) for x in mixed["dedupe"].read_text().splitlines()]
    cl = f["clusters"]
    assert cl["lines"] == len(lines) == c["exact_duplicates"] + c["near_duplicates"]
    sizes = collections.Counter((x["matched_source"], x["matched_line"]) for x in lines)
    assert cl["clusters"] == len(sizes)
    assert [t["size"] for t in cl["top"]] == sorted((n + 1 for n in sizes.values()), reverse=True)[:10]
    assert cl["top"][0]["size"] >= 4  # guard: the planted cluster of four copies
    top = cl["top"][0]
    assert top["kept_excerpt"] and top["examples"][0]["excerpt"]


def test_packing_figure_matches_a_slow_recount_of_every_row(mixed: dict[str, Any]) -> None:
    ds = open_dataset(mixed["ds"])
    m = ds.manifest
    rows = slow_rows(mixed["ds"])
    f = mixed["json"]["packing"]
    assert f["rows"] == len(rows) == m.rows and len(rows) > 40
    real = sum(r["real"] for r in rows)
    assert f["real_tokens"] == real
    assert f["efficiency"] == pytest.approx(real / (len(rows) * L), abs=1e-6)
    assert f["efficiency"] == pytest.approx(m.packing["efficiency"], abs=1e-6)
    assert f["padding_tokens"] == m.counts["padding_tokens"] == len(rows) * L - real
    docs = collections.Counter(r["docs"] for r in rows)
    assert dict(zip(f["segments_per_row"]["values"], f["segments_per_row"]["counts"])) == \
        {k: docs.get(k, 0) for k in range(max(docs) + 1)}
    pad = f["padding_per_row"]
    slow_pad = [L - r["real"] for r in rows]
    assert sum(pad["counts"]) == len(rows) and pad["edges"][0] == 0 and pad["edges"][-1] > L
    for lo, hi, n in zip(pad["edges"], pad["edges"][1:], pad["counts"]):
        assert n == sum(1 for p in slow_pad if lo <= p < hi), (lo, hi)
    single = sum(1 for r in rows if r["docs"] == 1 and r["real"] == L)
    assert f["single_full_rows"] == single > 0  # guard: the long documents filled rows
    expected = f["from_documents"]
    assert expected["available"]
    assert expected["full_pieces_of_long_documents"] + expected["documents_of_exactly_seq_len"] == single


def test_lengths_figure_is_documents_bin(mixed: dict[str, Any]) -> None:
    docs = read_documents(mixed["ds"])
    assert docs is not None
    m = json.loads((mixed["ds"] / "manifest.json").read_text())
    f = mixed["json"]["lengths"]
    assert f["available"] and f["documents"] == len(docs)
    assert {g["name"]: g["documents"] for g in f["by_kind"]} == \
        {KIND_NAMES[k]: n for k, n in collections.Counter(docs["kind"].tolist()).items()}
    assert {g["name"]: g["documents"] for g in f["by_kind"]} == m["counts"]["documents_by_shape"]
    names = [s["name"] for s in m["mix"]["sources"]]
    assert [g["name"] for g in f["by_source"]] == names
    for g in f["by_kind"] + f["by_source"]:
        assert sum(g["tokens"]["counts"]) == sum(g["chars"]["counts"]) == g["documents"], g["name"]
    edges = f["tokens_edges"]
    col = [int(t) for t in docs["tokens"]]
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        last = i == len(edges) - 2
        n = sum(1 for t in col if lo <= t < hi or (last and t == hi))
        assert n == sum(g["tokens"]["counts"][i] for g in f["by_kind"]), (lo, hi)
    assert f["over_seq_len"] == sum(1 for t in col if t > L) >= 3
    assert f["documents_split"] == m["counts"]["documents_split"]


def test_loss_figure_matches_arrays_manifest_and_documents(mixed: dict[str, Any],
                                                           tokenizer: Any) -> None:
    rows = slow_rows(mixed["ds"])
    f = mixed["json"]["loss"]
    real = sum(r["real"] for r in rows)
    assert f["has_loss_mask"] and f["real_tokens"] == real
    assert f["loss_mask_ones"] == sum(r["ones"] for r in rows)
    assert f["learned_positions"] == sum(r["learned"] for r in rows) == f["manifest_target_tokens"]
    docs = read_documents(mixed["ds"])
    assert docs is not None
    for kind in f["by_kind"]["kinds"]:
        k = KIND_NAMES.index(kind["name"])
        sel = [d for d in docs.tolist() if d[3] == k]  # (tokens, chars, targets, kind, source, uses, split)
        tok = sum(d[0] * d[5] for d in sel)
        tgt = sum(d[2] * d[5] for d in sel)
        assert (kind["tokens_in_rows"], kind["targets_in_rows"]) == (tok, tgt)
        assert kind["share_in_rows"] == pytest.approx(tgt / tok, abs=1e-6)
    shares = {k["name"]: k["share_in_rows"] for k in f["by_kind"]["kinds"]}
    assert shares["text"] == 1.0 and 0 < shares["prompt"] < 1 and 0 < shares["chat"] < 1
    # the rows hold each training document once per use: the same tokens and targets
    assert sum(k["tokens_in_rows"] for k in f["by_kind"]["kinds"]) == real
    assert sum(k["targets_in_rows"] for k in f["by_kind"]["kinds"]) == f["loss_mask_ones"]
    r = f["sample_row"]
    assert r["row"] == mixed["hostile_row"]
    row = open_dataset(mixed["ds"]).row(r["row"])
    seg, ids = row["segment_ids"].tolist(), row["input_ids"].tolist()
    assert sum(t["target"] for t in r["tokens"]) == rows[r["row"]]["learned"]
    for s in range(1, max(seg) + 1):
        text = "".join(t["text"] for t in r["tokens"] if t["segment"] == s)
        assert text == tokenizer.decode([i for i, g in zip(ids, seg) if g == s], skip_special_tokens=False)


def reference_count(text: str, term: str) -> int:
    """Non-overlapping, case-insensitive occurrences; whole word at each end where the term
    has a letter or digit (a plain loop over str.find)."""
    text, term = text.casefold(), term.casefold()

    def word(ch: str) -> bool:
        return ch.isalnum() or ch == "_"

    n = start = 0
    while (i := text.find(term, start)) >= 0:
        before = text[i - 1] if i else ""
        after = text[i + len(term)] if i + len(term) < len(text) else ""
        ok = not (word(term[0]) and before and word(before)) and \
            not (word(term[-1]) and after and word(after))
        if ok:
            n += 1
            start = i + len(term)
        else:
            start = i + 1
    return n


def test_flag_terms_equal_a_slow_count_over_the_same_sampled_rows(mixed: dict[str, Any]) -> None:
    f = mixed["json"]
    sample = f["sample"]
    assert sample["rows_sampled"] == 40 < sample["rows_total"] and not sample["all_rows"]
    assert sample["rows"] == sample_rows(sample["rows_total"], 40, 0).tolist()
    ds = open_dataset(mixed["ds"])
    src = np.concatenate([np.asarray(s.arrays["source"]) for s in ds.shards])
    names = [s["name"] for s in ds.manifest.mix["sources"]]
    t = f["balance"]["flag_terms"]
    # comments, blank lines and repeats are gone
    assert t["terms"] == ["alpha", "THE", "a", "ta", "omega", ".", "Привет", "</script>", "alpha.", "ta."]
    expected: dict[str, dict[str, int]] = {}
    for r in sample["rows"]:
        per = expected.setdefault(names[src[r]], dict.fromkeys(t["terms"], 0))
        for doc in mixed["texts"][r]:
            for term in t["terms"]:
                per[term] += reference_count(doc, term)
    assert t["by_source"] == expected
    total = collections.Counter()
    for per in expected.values():
        total.update(per)
    assert total["alpha"] > 0 and total["a"] > 0 and total["."] > 0  # guard: real matches
    assert total["ta"] == 0  # inside beta/theta/iota only: whole words never
    assert t["note"] == "term counts, not a bias verdict"
    assert "term counts, not a bias verdict" in mixed["html"].read_text(encoding="utf-8")


def test_all_rows_script_mix_and_flag_terms(mixed: dict[str, Any],
                                                               tokenizer: Any) -> None:
    f = mixed["json"]
    rows = list(range(f["sample"]["rows_total"]))
    out = mixed["tmp"] / "all.json"
    assert main(["report", str(mixed["ds"]), "--out", str(mixed["tmp"] / "all.html"), "--json",
                 str(out), "--sample-rows", str(len(rows)), "--flag-terms", str(mixed["terms"]),
                 "--quiet"]) == 0
    every = json.loads(out.read_text())
    assert every["sample"]["all_rows"] and every["sample"]["rows"] == rows
    terms = every["balance"]["flag_terms"]
    texts = [doc for r in rows for doc in mixed["texts"][r]]
    total = {t: sum(c[t] for c in terms["by_source"].values()) for t in terms["terms"]}
    assert total == {t: sum(reference_count(doc, t) for doc in texts) for t in terms["terms"]}
    # guards: the hostile and Cyrillic rows, and a term with a word boundary at one end only
    assert total["</script>"] > 0 and total["Привет"] > 0 and 0 < total["alpha."] < total["."]
    assert total["ta."] == 0 < sum(doc.count("ta.") for doc in texts)  # beta., zeta.: not words
    scripts = every["balance"]["scripts"]["total"]
    assert sum(scripts.values()) == sum(len(t) for t in texts)
    names = [unicodedata.name(ch, "") for t in texts for ch in t]
    for script, prefix in (("Greek", "GREEK"), ("Cyrillic", "CYRILLIC"), ("Han", "CJK"),
                           ("Katakana", "KATAKANA"), ("Hangul", "HANGUL"), ("Latin", "LATIN")):
        assert scripts.get(script, 0) == sum(1 for n in names if n.startswith(prefix)) > 0, script
    assert scripts["digits and numbers"] == sum(1 for t in texts for ch in t if ch.isdigit())
    assert scripts["whitespace"] == sum(1 for t in texts for ch in t if ch.isspace())


def test_html_is_self_contained_escaped_and_holds_the_json(mixed: dict[str, Any]) -> None:
    html = mixed["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert html.count("<script") == 1  # only the JSON block, nothing that runs
    row = re.search(r'<div class="row">(.*?)</div>', html, re.DOTALL)
    assert row is not None
    body = html[html.index("<body>"):html.index('<script type="application/json"')]
    tags = set(re.findall(r"</?([^\s>/]*)", body))
    assert tags <= {"body", "h1", "h2", "h3", "p", "table", "tr", "th", "td", "img", "div", "span",
                    "br", "code", "a"}, tags  # nothing from the data became markup
    text = re.sub(r"</?span[^>]*>", "", row.group(1))  # the tokens' text, still escaped
    assert "<" not in text and ">" not in text and not re.search(r"&(?!(lt|gt|amp|quot|#x27);)", text)
    plain = htmllib.unescape(text)
    assert any(HOSTILE.replace("alpha", w) in plain for w in ("alpha", "zeta eta"))  # the rendered row
    block = re.search(r'<script type="application/json" id="figures">(.*?)</script>', html, re.DOTALL)
    assert block is not None and "<" not in block.group(1)  # no "</script>" ends it early
    assert json.loads(block.group(1)) == mixed["json"]
    for h in ("1. Document lengths", "2. Packing", "3. Counts", "4. Loss", "5. Data balance"):
        assert h in html
    s = mixed["json"]["sample"]
    assert f"{s['rows_sampled']:,} of the {s['rows_total']:,} rows (seed 0" in html


def test_png_files_are_the_embedded_plots(mixed: dict[str, Any]) -> None:
    html = mixed["html"].read_text(encoding="utf-8")
    embedded = [base64.b64decode(x) for x in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]
    files = sorted(mixed["png"].glob("*.png"))
    assert {p.stem for p in files} == {"lengths", "packing", "counts", "loss", "scripts", "terms"}
    assert sorted(p.read_bytes() for p in files) == sorted(embedded)
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") for b in embedded)
    again = mixed["tmp"] / "png_again"
    shutil.copytree(mixed["png"], again)
    assert main(["report", str(mixed["ds"]), "--out", str(mixed["tmp"] / "again.html"), "--png-dir",
                 str(again), "--quiet"]) == 0
    assert {p.stem for p in again.glob("*.png")} == {"lengths", "packing", "counts", "loss", "scripts"}


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless Chromium: found on PATH, or installed with apt-get when running as root."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    import os

    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium/chromium-browser on PATH, and not root with apt-get to install it")
    r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       check=False, capture_output=True, text=True, timeout=900)
    path = shutil.which("chromium")
    if r.returncode or not path:
        pytest.skip(f"apt-get install chromium failed: {(r.stderr or r.stdout)[-300:]}")
    return path


def test_the_page_renders_in_headless_chromium(mixed: dict[str, Any], chromium: str) -> None:
    from matplotlib.image import imread

    shot = mixed["tmp"] / "shot.png"
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        f"--screenshot={shot}", "--window-size=1200,3000",
                        mixed["html"].resolve().as_uri()], check=False, capture_output=True,
                       text=True, timeout=180)
    assert shot.is_file(), r.stderr[-2000:]
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (3000, 1200)
    nonwhite = np.mean(img.min(axis=2) < 0.95)
    colours = len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    saturated = np.mean(img.max(axis=2) - img.min(axis=2) > 0.25)  # the plots' colours, not text
    assert nonwhite > 0.05 and colours > 200 and saturated > 0.01, (nonwhite, colours, saturated)


def test_a_dataset_without_documents_bin_says_so(mixed: dict[str, Any]) -> None:
    old = mixed["tmp"] / "old"
    shutil.copytree(mixed["ds"], old)
    (old / "documents.bin").unlink()
    m = json.loads((old / "manifest.json").read_text())
    del m["documents"]
    (old / "manifest.json").write_text(json.dumps(m))
    out = mixed["tmp"] / "old.json"
    assert main(["report", str(old), "--out", str(mixed["tmp"] / "old.html"), "--json", str(out),
                 "--quiet"]) == 0
    f = json.loads(out.read_text())
    assert f["lengths"] == {**f["lengths"], "available": False, "reason": NO_DOCUMENTS}
    assert f["loss"]["by_kind"] == {"available": False, "reason": NO_DOCUMENTS}
    assert f["packing"]["from_documents"]["reason"] == NO_DOCUMENTS
    assert f["packing"]["rows"] == mixed["json"]["packing"]["rows"]  # the row figures stay
    assert NO_DOCUMENTS in (mixed["tmp"] / "old.html").read_text(encoding="utf-8")


def test_the_validation_set_is_a_dataset_of_its_own(mixed: dict[str, Any]) -> None:
    val = mixed["ds"] / "val"
    out = mixed["tmp"] / "val.json"
    assert main(["report", str(val), "--out", str(mixed["tmp"] / "val.html"), "--json", str(out),
                 "--quiet"]) == 0
    f = json.loads(out.read_text())
    rows = slow_rows(val)
    assert f["packing"]["rows"] == len(rows) > 0
    assert f["packing"]["real_tokens"] == sum(r["real"] for r in rows)
    assert f["lengths"]["reason"] == NO_DOCUMENTS_VAL  # its documents are in the parent's file
    src = np.concatenate([np.asarray(s.arrays["source"]) for s in open_dataset(val).shards])
    assert [s["rows"] for s in f["sources"]] == np.bincount(src, minlength=len(f["sources"])).tolist()
    assert "the validation set of" in (mixed["tmp"] / "val.html").read_text(encoding="utf-8")


def synthetic(tmp: Path) -> tuple[Path, np.ndarray]:
    """A hand-made dataset (L = 8, no tokenizer copy, no loss mask) with a documents.bin whose
    every number is known: rows [5+2 docs], [8 of a 19-token doc], [8 again], [3 + pad],
    [8 of an exactly-8 doc]."""
    tmp.mkdir()
    seg = np.array([[1, 1, 1, 1, 1, 2, 2, 0], [1] * 8, [1] * 8, [1, 1, 1, 0, 0, 0, 0, 0], [1] * 8], np.uint16)
    ids = np.where(seg > 0, 7, 0).astype(np.uint16)
    w = ShardWriter(tmp, 8, {"input_ids": np.dtype("<u2"), "segment_ids": np.dtype("<u2")}, shard_rows=3)
    w.add({"input_ids": ids, "segment_ids": seg})
    docs = np.zeros(5, DOCUMENT_DTYPE)
    docs["tokens"] = [5, 2, 19, 8, 30]
    docs["chars"] = [20, 9, 80, 33, 120]
    docs["targets"] = docs["tokens"]
    docs["kind"] = [0, 0, 0, 0, 0]
    docs["uses"] = [1, 1, 1, 1, 0]   # the 30-token one went to validation
    docs["split"] = [0, 0, 0, 0, 1]
    (tmp / "documents.bin").write_bytes(docs.tobytes())
    section = {"file": "documents.bin", "count": 5,
               "dtype": [[n, DOCUMENT_DTYPE.fields[n][0].str] for n in DOCUMENT_DTYPE.names]}
    w.finish(tokenizer={"vocab_size": 16, "pad_id": 0}, documents=section,
             counts={"records_read": 5, "records_kept": 5, "dropped": {}, "documents_split": 1},
             packing={"mode": "bfd", "long_policy": "split", "efficiency": 34 / 40},
             inputs=[{"name": "hand.jsonl", "bytes": 1}])
    return tmp, docs


def test_synthetic_numbers_and_no_tokenizer(tmp_path: Path) -> None:
    ds, _ = synthetic(tmp_path / "syn")
    out = tmp_path / "syn.json"
    assert main(["report", str(ds), "--out", str(tmp_path / "syn.html"), "--json", str(out), "--quiet"]) == 0
    f = json.loads(out.read_text())
    p = f["packing"]
    assert p["rows"] == 5 and p["real_tokens"] == 7 + 8 + 8 + 3 + 8 and p["padding_tokens"] == 1 + 5
    assert p["segments_per_row"]["counts"] == [0, 4, 1]
    assert p["single_full_rows"] == 3
    assert p["from_documents"] == {"available": True, "reason": None, "long_documents": 2,
                                   "full_pieces_of_long_documents": 2, "documents_of_exactly_seq_len": 1}
    g = f["lengths"]
    assert g["over_seq_len"] == 2 and g["over_seq_len_share"] == 0.4 and g["documents"] == 5
    assert [s["name"] for s in f["sources"]] == ["hand.jsonl"]
    assert f["sources"][0]["validation_documents"] == 1
    assert f["loss"]["has_loss_mask"] is False and f["loss"]["mask_share"] == 1.0
    assert f["loss"]["learned_positions"] == 7 + 8 + 8 + 3 + 8 - 6
    assert f["balance"] == {"available": False, "reason": NO_TOKENIZER}
    assert f["loss"]["sample_row"]["reason"] == NO_TOKENIZER


def run_cli(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``fastprep report ARGS --out OUT`` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "fastprep", "report", *args, "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=300)


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastprep: error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_bad_inputs_are_one_line_errors(mixed: dict[str, Any], tmp_path: Path) -> None:
    out, ds = tmp_path / "r.html", str(mixed["ds"])
    one_line_error(run_cli(out, str(tmp_path / "nope")), "no such dataset folder")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n   \n")
    one_line_error(run_cli(out, ds, "--flag-terms", str(empty)), "--flag-terms", "no terms")
    one_line_error(run_cli(out, ds, "--flag-terms", str(tmp_path / "missing.txt")), "cannot read")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "exact", "line": 1, "matched_line": 0}\n{oops\n')
    one_line_error(run_cli(out, ds, "--dedupe-report", str(bad)), "bad.jsonl:2")
    one_line_error(run_cli(tmp_path / "no" / "r.html", ds), "--out", "does not exist")
    one_line_error(run_cli(out, ds, "--sample-rows", "0"), "--sample-rows")
    one_line_error(run_cli(out, ds, "--row", "100000"), "--row")
    assert not out.exists()  # a failed report writes nothing


def test_a_bad_row_is_refused_before_the_pass_over_the_rows(mixed: dict[str, Any], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import fastprep.report.figures

    def no_pass(*args: Any, **kw: Any) -> None:
        raise AssertionError("the rows were read before --row was checked")

    monkeypatch.setattr(fastprep.report.figures, "row_stats", no_pass)
    assert main(["report", str(mixed["ds"]), "--out", str(tmp_path / "r.html"), "--row", "-100000"]) == 2
    assert "--row -100000: the dataset has" in capsys.readouterr().err


def test_missing_matplotlib_names_the_extra(mixed: dict[str, Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["report", str(mixed["ds"]), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'fastprep[report]'" in err[0]
    assert not (tmp_path / "r.html").exists()


def test_sampling_is_seeded_and_spread() -> None:
    a, b = sample_rows(1000, 50, 0), sample_rows(1000, 50, 1)
    assert a.tolist() == sample_rows(1000, 50, 0).tolist() and a.tolist() != b.tolist()
    assert len(set(a.tolist())) == 50 and a.tolist() == sorted(a.tolist())
    assert a.max() > 500  # not the first rows
    assert sample_rows(30, 50, 0).tolist() == list(range(30))
