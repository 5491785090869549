"""Retrieval-augmented generation: retrieved passages and a question in the prompt, loss on the
grounded answer only.

Records are ``{"id", "question", "retrieval": {"retriever", "top_k", "passages"}, "answer"}``
(examples/data/rag.jsonl), the way a retrieval step logs its output: three passages of an
employee handbook per question, the relevant one at a varying rank among two distractors, and
an answer that cites the passage it used (``[2]``). ``--prompt-field`` reaches into the nested
object with a dotted name (``{retrieval.passages}``).

The passages are most of the tokens, and they must be context, never targets: a model trained
to write them learns to recite the handbook instead of reading the prompt. And the answer
comes last, so ``--long-docs truncate`` would cut exactly the part that is learned, and
``split`` would put it in a chunk without its passages: ``--seq-len 512`` holds the longest
record whole (checked: nothing split or truncated). The checks: every target is exactly its
answer, no passage token is a target, and each answer cites the passage of its own prompt
that it draws on.

    python examples/rag.py [--out DIR] [--steps N] [--fast]
"""

import re

import _common as ex  # the examples' shared plumbing: examples/_common.py

PROMPT = ("Answer the question using only the passages below, and cite the passage you used.\n\n"
          "{retrieval.passages}\n\nQuestion: {question}\nAnswer:\n")
PASSAGE = re.compile(r"^\[(\d+)\] (.*?)(?=\n\n\[|\Z)", re.DOTALL | re.MULTILINE)  # "[n] title\ntext"


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


if __name__ == "__main__":
    a = ex.args(__doc__)
    tok_dir, ds = ex.tokenizer(), a.out / "ds"
    ex.fastprep("prepare", ex.DATA / "rag.jsonl", "--tokenizer", tok_dir, "--seq-len", "512",
                "--prompt-field", PROMPT, "--completion-field", "answer", "--out", ds, "--overwrite")
    ex.fastprep("inspect", ds, "--chars", "600")
    ex.report(ds, a.out / "report.html")

    counts = ex.manifest(ds)["counts"]
    ex.check(counts["documents_split"] == 0 and counts["documents_truncated"] == 0,
             "a record was split or truncated: its answer would be lost or cut off from its passages")
    records = ex.read_jsonl(ex.DATA / "rag.jsonl")
    by_prompt = {ex.render(PROMPT, r): r for r in records}
    tok = ex.load_tokenizer(tok_dir)
    docs = ex.check_prompt_completion(ds, tok, {p: r["answer"] for p, r in by_prompt.items()})
    for d in docs:
        r = by_prompt[d.text(tok, which=False).removeprefix("<s>")]
        passages = r["retrieval"]["passages"]
        ex.check(passages in d.text(tok, which=False), f"{r['id']}: the passages are not all context")
        # grounded: the cited passage is the one that shares the most words with the answer
        blocks = dict(PASSAGE.findall(passages))
        best = max(blocks, key=lambda n: len(words(r["answer"]) & words(blocks[n])))
        ex.check(re.findall(r"\[(\d+)\]", r["answer"]) == [best], f"{r['id']}: cites no passage, or the wrong one")
    share = sum(int(d.targets.sum()) for d in docs) / sum(len(d.ids) for d in docs)
    print(f"answer tokens: {share:.0%} of all tokens; passages and questions are context only")
    ex.train(ds, a.out / "run", a.steps)
