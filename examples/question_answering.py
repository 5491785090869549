"""Question answering: answers in full sentences, loss on the answer only.

Records are ``{"id", "question", "answer"}`` (examples/data/qa.jsonl). They are prepared as
prompt/completion, not as ``text``: as one text the model would also be trained to write the
questions, and every question token would count in the loss. ``--prompt-field`` is a template
that wraps the question in the instruction the model will see at inference;
``--completion-field answer`` is what it must learn to write, followed by EOS so it learns to
stop after the sentence. The check: every document's targets decode to exactly its answer + EOS
and no question token is a target.

    python examples/question_answering.py [--out DIR] [--steps N] [--fast]
"""

import _common as ex  # the examples' shared plumbing: examples/_common.py

PROMPT = "Answer the question in one full sentence.\nQuestion: {question}\nAnswer:\n"

if __name__ == "__main__":
    a = ex.args(__doc__)
    tok_dir, ds = ex.tokenizer(), a.out / "ds"
    ex.fastprep("prepare", ex.DATA / "qa.jsonl", "--tokenizer", tok_dir, "--seq-len", "256",
                "--prompt-field", PROMPT, "--completion-field", "answer", "--out", ds, "--overwrite")
    ex.fastprep("inspect", ds, "--chars", "200")
    ex.report(ds, a.out / "report.html")

    records = ex.read_jsonl(ex.DATA / "qa.jsonl")
    tok = ex.load_tokenizer(tok_dir)
    docs = ex.check_prompt_completion(ds, tok, {ex.render(PROMPT, r): r["answer"] for r in records})
    for d in docs:  # full sentences: a capital letter first, a full stop last
        answer = d.text(tok, which=True).removesuffix("</s>")
        ex.check(answer[0].isupper() and answer.endswith((".", "!", "?")), f"not a full sentence: {answer!r}")
    ex.train(ds, a.out / "run", a.steps)
