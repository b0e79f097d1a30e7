#!/usr/bin/env python3
"""Write a tiny Llama model directory that vLLM serves without any download.

    make-tiny-model.py OUT_DIR TEXT_FILE...

The tokenizer is real: a byte-level BPE trained here (the `tokenizers` library, which vLLM's
dependencies bring) on TEXT_FILEs, saved as tokenizer.json, so that text prompts are encoded and
completions decoded to text. The weights are not stored: the engine runs with
`--load-format dummy` (random weights), so completions are text but not sense.
Run by images/vllm-larry/Dockerfile.cpu on this file's own text (which changes only with the
script, so that image layer stays cached); the output is the same for the same input files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB = 4096  # at most; a small text gives fewer, and the model matches the tokenizer
SPECIAL = ["<unk>", "<s>", "</s>"]


def tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def config(vocab: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "vocab_size": vocab,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, sources = Path(argv[0]), [Path(a) for a in argv[1:]]
    texts = [line for src in sources for line in src.read_text().splitlines() if line.strip()]
    tok = tokenizer(texts)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 2048,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (out / "config.json").write_text(json.dumps(config(tok.get_vocab_size()), indent=2))
    print(f"make-tiny-model: {out} (vocab {tok.get_vocab_size()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
