"""Cost of the router's prefix index (halffull.policy.prefix_index): time per request and memory.

    python bench/prefix_index.py [--replicas 8] [--requests 2000] [--blocks 1000000]

Per request: hash an 8,192-token prompt's token ids into 256-token blocks, match them against
every replica and record them on one, the work the router adds to a request when a tokenizer
is configured (tokenization itself excluded). Half the prompts continue an earlier one (a
multi-turn conversation), so matches run deep. A baseline in the same run, hashing the same
prompts without any index, separates the hashing from the index's own work. Times are this
thread's CPU time (`time.thread_time`), so other load on the machine does not enter them.

Memory: the index filled to `--blocks` tracked blocks over `--replicas` replicas, measured
with tracemalloc (every allocation the index holds) and `PrefixIndex.memory_bytes`.
Goals (issue 14): <= 200 us per 8k-token request, <= 100 MB for 1M tracked blocks.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import tracemalloc

from halffull.policy.prefix_index import PrefixIndex, token_block_hashes

PROMPT_TOKENS = 8192
BLOCK_TOKENS = 256


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    out: list[list[int]] = []
    for _ in range(n):
        if out and rng.random() < 0.5:
            base = rng.choice(out)
            keep = rng.randrange(BLOCK_TOKENS, PROMPT_TOKENS)
            tail = [rng.randrange(128256) for _ in range(PROMPT_TOKENS - keep)]
            out.append(base[:keep] + tail)
        else:
            out.append([rng.randrange(128256) for _ in range(PROMPT_TOKENS)])
    return out


def per_request(replicas: int, requests: int) -> tuple[float, float]:
    """Median microseconds per request: (hashing only, hashing + match + record)."""
    data = prompts(requests)
    names = [f"r{i}" for i in range(replicas)]
    index = PrefixIndex(BLOCK_TOKENS)
    base, full = [], []
    for i, ids in enumerate(data):
        t0 = time.thread_time()
        token_block_hashes(ids, BLOCK_TOKENS)
        t1 = time.thread_time()
        hashes = token_block_hashes(ids, BLOCK_TOKENS)
        matched = index.match(hashes, names)
        best = max(range(replicas), key=lambda k: (matched[k], -((i + k) % replicas)))
        index.record(names[best], hashes)
        t2 = time.thread_time()
        base.append(t1 - t0)
        full.append(t2 - t1)
    return statistics.median(base) * 1e6, statistics.median(full) * 1e6


def memory(replicas: int, blocks: int) -> tuple[int, float, int]:
    """(tracked blocks, MB by tracemalloc, MB by memory_bytes) with `blocks` tracked."""
    rng = random.Random(1)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = PrefixIndex(BLOCK_TOKENS)
    per = blocks // replicas
    for i in range(replicas):
        index.set_capacity(f"r{i}", 2 * per + 2)  # room for all: the bound is not hit here
    for i in range(replicas):
        chunk = [rng.getrandbits(63) for _ in range(per)]
        index.record(f"r{i}", chunk)
        del chunk
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return index.tracked_blocks(), held / 1e6, index.memory_bytes() // 1_000_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--replicas", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--blocks", type=int, default=1_000_000)
    args = ap.parse_args()
    print("| replicas | hashing only (us) | hashing + match + record (us) | index work (us) |")
    print("|---|---|---|---|")
    for n in args.replicas:
        base, full = per_request(n, args.requests)
        print(f"| {n} | {base:.0f} | {full:.0f} | {full - base:.0f} |")
    tracked, traced, own = memory(max(args.replicas), args.blocks)
    print(
        f"\nmemory: {tracked:,} tracked blocks on {max(args.replicas)} replicas: "
        f"{traced:.1f} MB (tracemalloc), {own} MB (memory_bytes), "
        f"{traced * 1e6 / tracked:.0f} bytes a block"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
