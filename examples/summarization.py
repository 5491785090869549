"""Summarization: a news article in the prompt, its one-sentence summary as the completion.

Records are ``{"id", "title", "body", "summary"}`` (examples/data/summarization.jsonl). The
prompt template puts title and body under an instruction; loss falls on the summary only (the
article is context: learning to reproduce articles is not the task, and they would dominate
the loss by token count).

Length is the trap: the summary comes last, so a document longer than ``--seq-len`` would lose
its summary under ``--long-docs truncate``, and under the default ``split`` the summary would
land in a chunk without its article. So ``--seq-len 512`` holds every article of this size,
and ``--max-chars 1500`` drops the one that would not fit (the harbour authority's annual
report), counted as ``too_long``, instead of training on a broken pair. The checks: that
record is dropped, no document is split or truncated, and every target is exactly a summary.

    python examples/summarization.py [--out DIR] [--steps N] [--fast]
"""

import _common as ex  # the examples' shared plumbing: examples/_common.py

PROMPT = "Summarize the article in one sentence.\n\nTitle: {title}\n\n{body}\n\nSummary:\n"
MAX_CHARS = 1500

if __name__ == "__main__":
    a = ex.args(__doc__)
    tok_dir, ds = ex.tokenizer(), a.out / "ds"
    ex.fastprep("prepare", ex.DATA / "summarization.jsonl", "--tokenizer", tok_dir, "--seq-len", "512",
                "--prompt-field", PROMPT, "--completion-field", "summary", "--max-chars", str(MAX_CHARS),
                "--out", ds, "--overwrite")
    ex.fastprep("inspect", ds, "--chars", "300")
    ex.report(ds, a.out / "report.html")

    records = ex.read_jsonl(ex.DATA / "summarization.jsonl")
    fits = [r for r in records if len(ex.render(PROMPT, r) + r["summary"]) <= MAX_CHARS]
    counts = ex.manifest(ds)["counts"]
    ex.check(counts["dropped"] == {"too_long": len(records) - len(fits)} and len(fits) < len(records),
             f"expected the one overlong article dropped as too_long, got {counts['dropped']}")
    ex.check(counts["documents_split"] == 0 and counts["documents_truncated"] == 0,
             "an article was split or truncated: its summary would be cut off or apart from it")
    tok = ex.load_tokenizer(tok_dir)
    docs = ex.check_prompt_completion(ds, tok, {ex.render(PROMPT, r): r["summary"] for r in fits})
    share = sum(int(d.targets.sum()) for d in docs) / sum(len(d.ids) for d in docs)
    print(f"summary tokens: {share:.0%} of all tokens (the rest is context, not loss)")
    ex.train(ds, a.out / "run", a.steps)
