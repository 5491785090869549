"""Translation, Korean <-> English in both directions, with the direction named in the prompt.

Records are ``{"id", "source_lang", "target_lang", "source", "target"}``
(examples/data/translation.jsonl): thirty sentence pairs, each once per direction. The prompt
template names the direction (``Translate from {source_lang} to {target_lang}``) because the
same model learns both: without it, an English sentence could legitimately be answered in
either language. Loss falls on the translation only.

The tokenizer matters here: byte-level BPE can encode any script, but a tokenizer that never
saw Korean spends three tokens per Hangul syllable (its UTF-8 bytes), so the shared example
tokenizer is trained on data that includes this file. The checks: the Korean encodes in well
under one token per byte and decodes back unchanged, both directions are present, every
target is exactly its translation, and English-to-Korean targets are Hangul while
Korean-to-English targets hold none.

    python examples/translation.py [--out DIR] [--steps N] [--fast]
"""

import re

import _common as ex  # the examples' shared plumbing: examples/_common.py

PROMPT = "Translate from {source_lang} to {target_lang}.\n{source_lang}: {source}\n{target_lang}:\n"
HANGUL = re.compile("[\uac00-\ud7a3]")

if __name__ == "__main__":
    a = ex.args(__doc__)
    tok_dir, ds = ex.tokenizer(), a.out / "ds"
    records = ex.read_jsonl(ex.DATA / "translation.jsonl")
    tok = ex.load_tokenizer(tok_dir)
    korean = "\n".join(r["source"] for r in records if r["source_lang"] == "Korean")
    n_ids, n_bytes = len(tok.encode(korean).ids), len(korean.encode())
    print(f"Korean text: {n_bytes:,} UTF-8 bytes -> {n_ids:,} tokens")
    ex.check(n_ids < n_bytes / 2, "the tokenizer has learned no Korean: it spends about one token per byte")
    ex.check(tok.decode(tok.encode(korean).ids) == korean, "Korean does not decode back to itself")

    ex.fastprep("prepare", ex.DATA / "translation.jsonl", "--tokenizer", tok_dir, "--seq-len", "128",
                "--prompt-field", PROMPT, "--completion-field", "target", "--out", ds, "--overwrite")
    ex.fastprep("inspect", ds, "--chars", "200")
    ex.report(ds, a.out / "report.html")

    by_prompt = {ex.render(PROMPT, r): r for r in records}
    docs = ex.check_prompt_completion(ds, tok, {p: r["target"] for p, r in by_prompt.items()})
    directions = {"Korean": 0, "English": 0}
    for d in docs:
        r = by_prompt[d.text(tok, which=False).removeprefix("<s>")]
        directions[r["target_lang"]] += 1
        hangul = len(HANGUL.findall(d.text(tok, which=True)))
        ex.check(hangul > 0 if r["target_lang"] == "Korean" else hangul == 0,
                 f"{r['id']}: a {r['target_lang']} target with {hangul} Hangul syllables")
    ex.check(directions["Korean"] == directions["English"] == len(records) // 2,
             f"expected both directions equally, got {directions}")
    print(f"directions: English->Korean {directions['Korean']}, Korean->English {directions['English']}")
    ex.train(ds, a.out / "run", a.steps)
