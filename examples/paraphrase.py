"""Paraphrase: rewrite a sentence with the same meaning in other words; loss on the rewrite.

Records are ``{"id", "sentence", "paraphrase"}`` (examples/data/paraphrase.jsonl). Paraphrase
corpora are usually mined (question pairs, subtitles, back-translation) and the same pair often
comes from two sources: this file holds one such repeat, under another id. Exact dedupe (the
default, a 128-bit hash of the cleaned record, ids not included) removes it, so no pair is
learned twice. Loss is on the paraphrase only, and no paraphrase may equal its sentence: a
pair that copies its input teaches the model to copy. ``--seq-len 256`` holds three or four
of these short pairs per row. The checks: one duplicate removed, no
copy, every target exactly the paraphrase.

    python examples/paraphrase.py [--out DIR] [--steps N] [--fast]
"""

import _common as ex  # the examples' shared plumbing: examples/_common.py

PROMPT = "Paraphrase the sentence: keep its meaning, change the words.\nSentence: {sentence}\nParaphrase:\n"

if __name__ == "__main__":
    a = ex.args(__doc__)
    tok_dir, ds = ex.tokenizer(), a.out / "ds"
    ex.fastprep("prepare", ex.DATA / "paraphrase.jsonl", "--tokenizer", tok_dir, "--seq-len", "256",
                "--prompt-field", PROMPT, "--completion-field", "paraphrase", "--dedupe", "exact",
                "--dedupe-report", a.out / "duplicates.jsonl", "--out", ds, "--overwrite")
    ex.fastprep("inspect", ds, "--chars", "200")
    ex.report(ds, a.out / "report.html", "--dedupe-report", a.out / "duplicates.jsonl")

    records = ex.read_jsonl(ex.DATA / "paraphrase.jsonl")
    pairs = {(r["sentence"], r["paraphrase"]) for r in records}
    counts = ex.manifest(ds)["counts"]
    ex.check(counts["exact_duplicates"] == len(records) - len(pairs) == 1,
             f"expected the one repeated pair removed, exact_duplicates = {counts['exact_duplicates']}")
    for dup in ex.read_jsonl(a.out / "duplicates.jsonl"):
        print(f"removed {dup['id']} (line {dup['line']}): the same pair as {dup['matched_id']}")
    ex.check(all(s.casefold() != p.casefold() for s, p in pairs), "a paraphrase copies its sentence")
    tok = ex.load_tokenizer(tok_dir)
    ex.check_prompt_completion(ds, tok, {ex.render(PROMPT, r): r["paraphrase"] for r in records})
    ex.train(ds, a.out / "run", a.steps)
