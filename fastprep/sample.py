"""Sample data without downloads: a corpus built from the Python standard library on this machine,
and a byte-level BPE tokenizer trained on it, saved as a model folder the way ``transformers``
saves one.

``fastprep sample DIR`` writes::

    DIR/text.jsonl.zst      {"text": ...}            module/class/function docstrings and source code
    DIR/instruct.jsonl      {"prompt", "completion"}  "Explain this function" -> its docstring
    DIR/chat.jsonl          {"messages": [...]}       a system persona, user question, assistant answer
    DIR/tokenizer/          tokenizer.json, tokenizer_config.json (BOS/EOS/pad, ChatML template),
                            special_tokens_map.json

Planted on purpose: exact duplicates, near duplicates (a few words edited) and a handful of bad
lines (malformed JSON, a missing field, a wrong type) so a first run shows every count.
Everything is deterministic for a given size and seed.
"""

from __future__ import annotations

import ast
import json
import os
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from .stages.chat import DEFAULT_CHAT_TEMPLATE

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "test", "tests",
                                                             "idlelib", "__pycache__"))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return sorted(out)


def stdlib_units(limit_bytes: int) -> Iterator[tuple[str, str, str]]:
    """(kind, name, text) with kind in {"module", "function", "code"}, up to ``limit_bytes``."""
    total = 0
    for path in stdlib_files():
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        doc = ast.get_docstring(tree)
        if doc and len(doc) > 80:
            total += len(doc)
            yield "module", path.stem, doc
        lines = source.splitlines(keepends=True)  # ast.get_source_segment re-splits per call
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                d = ast.get_docstring(node)
                seg = "".join(lines[node.lineno - 1:node.end_lineno or node.lineno])
                if d and seg and 40 < len(d) and len(seg) < 6000:
                    total += len(seg)
                    yield "function", node.name, seg
        if len(source) < 200_000:
            total += len(source)
            yield "code", path.name, source
        if total >= limit_bytes:
            return


def edit_words(text: str, rng: random.Random, rate: float) -> str:
    """A near copy: about ``rate`` of the words (at least one) replaced by common words."""
    words = text.split(" ")
    for _ in range(max(1, int(len(words) * rate))):
        words[rng.randrange(len(words))] = rng.choice(["the", "a", "data", "value", "result"])
    return " ".join(words)


def train_tokenizer(texts: list[str], out_dir: str | os.PathLike[str], vocab_size: int = 8000) -> Path:
    """Train a byte-level BPE and save it as a model folder; returns the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": True,
              "add_eos_token": False, "model_max_length": 4096, "chat_template": DEFAULT_CHAT_TEMPLATE,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, indent=2))
    return out


def write_sample(out_dir: str | os.PathLike[str], megabytes: float = 8.0, seed: int = 0,
                 vocab_size: int = 8000) -> dict[str, str]:
    """Write the sample corpus and tokenizer; returns {name: path}."""
    import zstandard

    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    units = list(stdlib_units(int(megabytes * 1e6)))
    texts, instruct, chat = [], [], []
    for kind, name, text in units:
        texts.append({"text": text, "source": name})
        if kind == "function":
            doc = text.split('"""')[1].strip() if '"""' in text else ""
            if doc:
                instruct.append({"prompt": f"Explain what this Python code does:\n\n{text[:1500]}\n",
                                 "completion": doc})
                chat.append({"messages": [
                    {"role": "system", "content": "You are a concise Python expert."},
                    {"role": "user", "content": f"What does `{name}` do?"},
                    {"role": "assistant", "content": doc}]})
    # planted duplicates: 3% exact copies, 3% near copies (5% of words edited)
    n = len(texts)
    for _ in range(n * 3 // 100):
        texts.append(dict(texts[rng.randrange(n)]))
    for _ in range(n * 3 // 100):
        t = texts[rng.randrange(n)]
        texts.append({"text": edit_words(t["text"], rng, 0.05), "source": t["source"] + "~"})
    rng.shuffle(texts)
    bad_lines = [b'{"text": "unterminated', b'["not", "an", "object"]', b'{"body": "no text field"}',
                 b'{"text": 42}', b'{"text": "   "}']

    paths = {"text": str(out / "text.jsonl.zst"), "instruct": str(out / "instruct.jsonl"),
             "chat": str(out / "chat.jsonl")}
    cctx = zstandard.ZstdCompressor(level=3)
    with open(paths["text"], "wb") as raw, cctx.stream_writer(raw) as f:
        for i, rec in enumerate(texts):
            f.write(json.dumps(rec, ensure_ascii=False).encode() + b"\n")
            if i % max(1, len(texts) // len(bad_lines)) == 7 and bad_lines:
                f.write(bad_lines.pop() + b"\n")
    with open(paths["instruct"], "w", encoding="utf-8") as f:
        for rec in instruct:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with open(paths["chat"], "w", encoding="utf-8") as f:
        for rec in chat:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tok_texts = [t["text"] for t in texts[:5000]]
    paths["tokenizer"] = str(train_tokenizer(tok_texts, out / "tokenizer", vocab_size=vocab_size))
    return paths
