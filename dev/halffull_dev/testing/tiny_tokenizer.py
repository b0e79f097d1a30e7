"""A tokenizer for the tiny dummy-weight Llama, written locally (no downloads on test machines).

The engine tests run the tiny model with `skip_tokenizer_init`: prompts are token ids. Text
prompts and chat requests need a tokenizer, so this writes one the `transformers` loader accepts:
byte-level BPE without merges (every UTF-8 byte is one token, so any text encodes), the
specials `<s>` and `</s>` at ids 1 and 2 (the model config's BOS and EOS), and filler tokens
up to the model's vocabulary size, so that every id the random weights can sample decodes to
text. No chat template is included: tests pass one with vLLM's `--chat-template`.

`hack/make-tiny-model.py` (the images' tiny model) trains a BPE on text instead; this one has no
merges, so that a test can count a prompt's tokens as its UTF-8 bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from halffull_dev.testing.vllm_launch import TINY_VOCAB_SIZE

SPECIALS = ("<unk>", "<s>", "</s>")


def write_tiny_tokenizer(directory: Path, vocab_size: int = TINY_VOCAB_SIZE) -> Path:
    """Write tokenizer.json and tokenizer_config.json into `directory` and return it."""
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab: dict[str, int] = {}
    for token in (*SPECIALS, *sorted(byte_chars)):
        vocab[token] = len(vocab)
    filler = 0
    while len(vocab) < vocab_size:
        vocab[f"<t{filler}>"] = len(vocab)
        filler += 1
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIALS))
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    specials = dict(zip(("unk_token", "bos_token", "eos_token"), SPECIALS, strict=True))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, **specials}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory
