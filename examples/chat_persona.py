"""Chat with a persona: a system turn that sets who the assistant is; loss on assistant turns only.

Records are ``{"messages": [{"role", "content"}, ...]}`` (examples/data/chat_persona.jsonl):
four personas (a Python tutor, a bike shop, an on-call SRE, a cooking assistant), some
multi-turn, and six chats without a system turn. ``--system-prompt`` gives those a persona
instead of training them with none, which would teach the model a second, persona-less
behaviour. Conversations are rendered with the tokenizer's own chat template (ChatML here, from
its tokenizer_config.json), and only the assistant turns are targets, each with its
``<|im_end|>``, so the model learns to end its turn; the system and user turns are context. The
checks: every chat starts with its own or the filled-in system turn, and the targets of every
document are exactly its assistant turns.

    python examples/chat_persona.py [--out DIR] [--steps N] [--fast]
"""

import _common as ex  # the examples' shared plumbing: examples/_common.py
import numpy as np

DEFAULT_SYSTEM = "You are a friendly, concise assistant. Answer in one or two sentences."


def chatml(messages: list[dict]) -> str:
    """What the ChatML template renders (the expected text of a document)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


if __name__ == "__main__":
    a = ex.args(__doc__)
    tok_dir, ds = ex.tokenizer(), a.out / "ds"
    ex.fastprep("prepare", ex.DATA / "chat_persona.jsonl", "--tokenizer", tok_dir, "--seq-len", "256",
                "--system-prompt", DEFAULT_SYSTEM, "--out", ds, "--overwrite")
    ex.fastprep("inspect", ds, "--chars", "300")
    ex.report(ds, a.out / "report.html")

    tok = ex.load_tokenizer(tok_dir)
    records = ex.read_jsonl(ex.DATA / "chat_persona.jsonl")
    without_system = sum(r["messages"][0]["role"] != "system" for r in records)
    expected = {}
    for r in records:
        msgs = r["messages"]
        if msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": DEFAULT_SYSTEM}, *msgs]
        expected[chatml(msgs)] = [m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant"]
    filled = 0
    for d in ex.documents(ds):
        text = d.text(tok).removeprefix("<s>")
        ex.check(text in expected, f"row {d.row}: a document that is no record's chat: {text[:80]!r}")
        filled += text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>")
        turns = [tok.decode(d.ids[s:e].tolist(), skip_special_tokens=False) for s, e in runs(d.targets)]
        ex.check(turns == expected.pop(text),
                 f"row {d.row}: targets {turns}, expected exactly the assistant turns with <|im_end|>")
    ex.check(not expected, f"{len(expected)} chat(s) missing from the dataset")
    ex.check(filled == without_system > 0, f"{filled} chats got the --system-prompt persona, expected the "
             f"{without_system} without one")
    print(f"checked: a system turn in every chat ({filled} filled in), loss on assistant turns only")
    ex.train(ds, a.out / "run", a.steps)
