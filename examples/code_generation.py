"""Code generation: complete a function (or file) from its signature and docstring, with every
space, tab and newline intact.

Records are HumanEval-style ``{"task_id", "language", "prompt", "canonical_solution"}``
(examples/data/code.jsonl): Python, Go (tab-indented), a Makefile (whose recipes must start
with a tab), YAML, SQL, JavaScript and bash. ``--completion-field canonical_solution`` maps
HumanEval's field name; the prompt field is already called ``prompt``.

Whitespace is syntax here, so the cleaning defaults that suit prose are turned off:
``--no-strip`` keeps the completion's final newline (a source file ends with one), and
``--unicode none`` keeps the bytes of string literals (NFC would compose the decomposed
"Cafe\\u0301" of the macOS file-name test into a different string, and the test would then
check another file name). Newline repair stays on: CRLF in code is an accident. The checks:
the tokenizer round-trips every record byte for byte, fastprep repaired nothing, and every
document's targets decode to exactly its solution, tabs and indentation included.

    python examples/code_generation.py [--out DIR] [--steps N] [--fast]
"""

import _common as ex  # the examples' shared plumbing: examples/_common.py

if __name__ == "__main__":
    a = ex.args(__doc__)
    tok_dir, ds = ex.tokenizer(), a.out / "ds"
    records = ex.read_jsonl(ex.DATA / "code.jsonl")
    tok = ex.load_tokenizer(tok_dir)
    for r in records:  # byte-level BPE: decode(encode(code)) is the code itself
        code = r["prompt"] + r["canonical_solution"]
        ex.check(tok.decode(tok.encode(code).ids) == code, f"{r['task_id']}: the code does not round-trip")
    print(f"round trip: {len(records)} programs decode(encode(code)) == code")

    ex.fastprep("prepare", ex.DATA / "code.jsonl", "--tokenizer", tok_dir, "--seq-len", "512",
                "--completion-field", "canonical_solution", "--no-strip", "--unicode", "none",
                "--out", ds, "--overwrite")
    ex.fastprep("inspect", ds, "--chars", "400")
    ex.report(ds, a.out / "report.html")

    ex.check(not ex.manifest(ds)["counts"]["repaired"], "cleaning changed the code")
    docs = ex.check_prompt_completion(ds, tok, {r["prompt"]: r["canonical_solution"] for r in records})
    targets = [d.text(tok, which=True) for d in docs]
    ex.check(any("\n\t$(CC)" in t for t in targets), "the Makefile's tab-indented recipe lost its tab")
    ex.check(any("Cafe\u0301" in t for t in targets), "the decomposed e + U+0301 was normalised")
    ex.train(ds, a.out / "run", a.steps)
