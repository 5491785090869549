"""Tokenizer families built in-process with `tokenizers` (no download), as real model folders:
tokenizer.json plus tokenizer_config.json with special tokens and a chat template.

- gpt2:     byte-level BPE (ByteLevel pre-tokenizer with its regex), <|endoftext|>, ChatML markers
- llama3:   Split(Llama-3 regex) + ByteLevel(use_regex=False), BPE(ignore_merges=True), a post-
            processor adding <|begin_of_text|>, a Llama-3-style chat template
- qwen:     NFC normalizer + Split(Qwen2 regex) + ByteLevel, special and non-special added tokens
- added:    gpt2's pipeline with added tokens that lstrip/rstrip and non-special added tokens
- spm:      SentencePiece-style BPE with byte fallback (Prepend + Replace normalizers, Llama-2's form)
- wordpiece: BertNormalizer + BertPreTokenizer + WordPiece (no fast backend: must fall back)
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_texts

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3_CHAT = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
               "'<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>"
               "\\n\\n' }}{% endif %}")
SPM_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}"
            "{{ ' ' + m['content'] + ' ' + eos_token }}{% else %}{{ '[INST] ' + m['content'] + "
            "' [/INST]' }}{% endif %}{% endfor %}")
FAMILIES = ("gpt2", "llama3", "qwen", "added", "spm", "wordpiece")


def corpus() -> list[str]:
    extra = ["Ünïcödé façade naïve 日本語 テキスト — “quotes” … 😀 \t\n code() {}",
             "한국어 문장입니다. 번역: hello world", "def f(x):\n    return x ** 2  # comment\n",
             "Straße ΣΊΣΥΦΟΣ Привет мир 12345 3.14", "e\u0301 cafe\u0301 ﬁ ＡＢＣ"]
    return make_texts(2000, seed=7) + extra * 30


def build(name: str, folder: Path, vocab: int = 900) -> Path:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, \
        pre_tokenizers, processors, trainers

    def bl_trainer(specials: list[str]) -> trainers.BpeTrainer:
        return trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML}
    if name in ("gpt2", "added"):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(corpus(), trainer=bl_trainer(["<|endoftext|>", "<|im_start|>",
                                                              "<|im_end|>"]))
        config.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>")
        if name == "added":
            tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, special=True),
                                    AddedToken("<sep>", lstrip=False, rstrip=True, special=True)])
            tok.add_tokens([AddedToken("[TOOL]", special=False), AddedToken("beta gamma", special=False)])
    elif name == "llama3":
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                    "<|end_header_id|>"]
        tok.train_from_iterator(corpus(), trainer=bl_trainer(specials))
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          special_tokens=[("<|begin_of_text|>", 0)])])
        config.update(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA3_CHAT)
    elif name == "qwen":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(corpus(), trainer=bl_trainer([]))
        tok.add_special_tokens([AddedToken(s, normalized=False, special=True)
                                for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
        tok.add_tokens([AddedToken(s, normalized=False, special=False) for s in ["<think>", "</think>"]])
        config.update(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    elif name == "spm":
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=vocab + 256, show_progress=False,
                                      special_tokens=["<unk>", "<s>", "</s>", *byte_tokens])
        tok.train_from_iterator(corpus(), trainer=trainer)
        config.update(bos_token="<s>", eos_token="</s>", add_bos_token=True, chat_template=SPM_CHAT)
    elif name == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(corpus(), trainer=trainers.WordPieceTrainer(
            vocab_size=vocab, show_progress=False, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
        config.update(bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]",
                      chat_template="{% for m in messages %}{{ m['role'] + ': ' + m['content'] + "
                                    "' [SEP] ' }}{% endfor %}")
    else:
        raise ValueError(name)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder
