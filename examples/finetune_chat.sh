#!/usr/bin/env bash
# prepare -> train, end to end on CPU in about a minute, no download:
# a sample chat + instruction dataset (loss only on assistant turns and completions), packed with
# best-fit decreasing, then full fine-tuning of a tiny random Llama; the loss falls.
# Needs the training extra: pip install -e ".[train]"   Usage: bash examples/finetune_chat.sh [DIR]
set -euo pipefail
d=${1:-/tmp/fastprep-example}
fastprep sample "$d/data" --mb 2 --vocab-size 2000
fastprep prepare "$d/data/chat.jsonl" "$d/data/instruct.jsonl" --tokenizer "$d/data/tokenizer" \
  --seq-len 256 --out "$d/ds" --overwrite --system-prompt "You are a concise Python expert."
fastprep inspect "$d/ds" --chars 200 | head -40
fastprep train --data "$d/ds" --model tiny --out "$d/run" --resume auto --batch-size 8 \
  --max-steps 60 --warmup-steps 5 --lr 3e-3 --log-every 10
