"""Measure engine-step times on your GPU and write a simulator profile from them.

    python bench/gpu_steps.py --model llama3-8b --out my-gpu.json [--csv steps.csv] [--quick]
    halffull sim --profile my-gpu.json --trace mooncake --max-model-len 131072 ...

Needs PyTorch with CUDA (not vLLM). A Llama-3-class decoder with random bf16 weights (GQA,
SwiGLU MLP, RMSNorm; RoPE left out, it is negligible) runs the batch one vLLM engine step holds:
`decode` sequences of one new token each attending `ctx` cached tokens, plus one prompt chunk of
`prefill` tokens attending `prior` cached tokens and itself (causal). Projections and MLP run on
all tokens together; logits only for each sequence's last token. Each shape is captured in a
CUDA graph and replayed; the median replay time is the step's GPU time, without vLLM's CPU
work (the profile adds the simulator's STEP_OVERHEAD_S for that). The same method as the H200
measurements in bench/data/h200/.

The steps are fitted with `halffull.sim.gpu_fit.fit_gpu` and written as a profile JSON (shape:
vLLM's GPU defaults, KV blocks from the GPU's memory). `--layers` builds fewer layers than the
model has and scales the time (for models larger than one GPU: pass the tensor-parallel shard's
sizes and the number of GPUs).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from halffull.sim.gpu_fit import MeasuredStep, fit_gpu, save_profile, worst_steps
from halffull.sim.profiles import (
    GPU_MEMORY_UTILIZATION,
    RUNTIME_RESERVE_BYTES,
    STEP_OVERHEAD_S,
    EngineShape,
    Profile,
    StepModel,
)

MODELS = {
    # d_model, query heads, KV heads, head dim, FFN, vocab, layers
    "llama3-8b": (4096, 32, 8, 128, 14336, 128256, 32),
    "llama3-70b-tp2-shard": (8192, 32, 4, 128, 14336, 64128, 80),
    "tiny": (256, 4, 2, 64, 512, 1000, 2),
}
SHAPES = [  # (prefill, prior, decode, ctx)
    *[(p, 0, 0, 0) for p in (16, 256, 1024, 2048, 4096, 8192)],
    *[(0, 0, d, c) for d in (1, 8, 64, 256, 1024) for c in (128, 1024, 4096)],
    *[(0, 0, d, c) for d, c in ((1, 32768), (8, 32768), (2, 131072))],
    *[(p, 0, d, 1024) for p, d in ((512, 64), (2048, 256), (4096, 64))],
    *[(p, prior, 0, 0) for p in (512, 2048) for prior in (8192, 32768)],
]


def measure(name: str, layers: int | None, quick: bool) -> list[MeasuredStep]:
    import torch  # imported here: the rest of the project never needs it

    d, heads, kv, hd, ffn, vocab, real = MODELS[name]
    built = min(layers or real, real)
    dev, dt = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)

    def w(*shape: int) -> Any:
        return torch.randn(*shape, device=dev, dtype=dt, generator=gen) * 0.02

    weights = [
        (w(d, (heads + 2 * kv) * hd), w(heads * hd, d), w(d, 2 * ffn), w(ffn, d))
        for _ in range(built)
    ]
    head = w(d, vocab)
    norm = torch.nn.functional.rms_norm
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def step(x: Any, caches: list[Any], pre: list[Any], prefill: int, decode: int) -> Any:
        for (qkv, o, gu, down), cache, before in zip(weights, caches, pre, strict=True):
            h = norm(x, (d,))
            q, k, v = (h @ qkv).split([heads * hd, kv * hd, kv * hd], dim=-1)
            outs = []
            if decode:
                qd = q[:decode].view(decode, heads, 1, hd)
                ck, cv = cache
                outs.append(sdpa(qd, ck, cv, enable_gqa=True).reshape(decode, heads * hd))
            if prefill:
                qp = q[decode:].view(1, prefill, heads, hd).transpose(1, 2)
                kp = k[decode:].view(1, prefill, kv, hd).transpose(1, 2)
                vp = v[decode:].view(1, prefill, kv, hd).transpose(1, 2)
                if before is not None:
                    kp = torch.cat([before[0], kp], dim=2)
                    vp = torch.cat([before[1], vp], dim=2)
                mask = None
                if before is not None:
                    n = kp.shape[2]
                    mask = torch.ones(prefill, n, device=dev, dtype=torch.bool).tril(n - prefill)
                out = sdpa(qp, kp, vp, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
                outs.append(out.transpose(1, 2).reshape(prefill, heads * hd))
            x = x + torch.cat(outs) @ o
            g, u = (norm(x, (d,)) @ gu).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(g) * u) @ down
        last = x[:decode] if not prefill else torch.cat([x[:decode], x[-1:]])
        return last @ head

    def timed(fn: Any) -> float:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        times = []
        for _ in range(10):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        del graph
        return sorted(times)[len(times) // 2]

    out = []
    for prefill, prior, decode, ctx in SHAPES[:6] if quick else SHAPES:
        try:
            x = torch.randn(prefill + decode, d, device=dev, dtype=dt)
            caches = [
                (
                    torch.randn(decode, kv, ctx, hd, device=dev, dtype=dt),
                    torch.randn(decode, kv, ctx, hd, device=dev, dtype=dt),
                )
                if decode
                else None
                for _ in range(built)
            ]
            pre = [
                (
                    torch.randn(1, kv, prior, hd, device=dev, dtype=dt),
                    torch.randn(1, kv, prior, hd, device=dev, dtype=dt),
                )
                if prior
                else None
                for _ in range(built)
            ]
            ms = timed(partial(step, x, caches, pre, prefill, decode))
            head_ms = timed(partial(torch.matmul, x[-1:], head))
            ms = head_ms + (ms - head_ms) * real / built
        except torch.OutOfMemoryError:
            print(f"skip {prefill}+{prior}/{decode}x{ctx}: out of memory", file=sys.stderr)
            torch.cuda.empty_cache()
            continue
        print(f"prefill {prefill} after {prior}, decode {decode}x{ctx}: {ms:.3f} ms", flush=True)
        out.append(MeasuredStep(name, prefill, prior, decode, ctx, ms / 1000))
        torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="llama3-8b")
    ap.add_argument("--layers", type=int, help="build this many layers and scale (large models)")
    ap.add_argument("--gpus", type=int, default=1, help="tensor-parallel GPUs of one replica")
    ap.add_argument("--name", help="profile name (default: derived from the GPU and model)")
    ap.add_argument("--out", type=Path, required=True, help="profile JSON to write")
    ap.add_argument("--csv", type=Path, help="also write the measured steps here")
    ap.add_argument("--max-model-len", type=int, default=16384)
    ap.add_argument("--quick", action="store_true", help="six shapes only (a smoke run)")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_steps: no CUDA device")
    steps = measure(args.model, args.layers, args.quick)
    if args.csv:
        with args.csv.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["model", "prefill", "prior", "decode", "ctx", "graph_ms"])
            for s in steps:
                out.writerow([s.model, s.prefill, s.prior, s.decode, s.ctx, s.seconds * 1000])
    d, heads, kv, hd, ffn, vocab, layers = MODELS[args.model]
    props = torch.cuda.get_device_properties(0)
    params = layers * (d * (heads + 2 * kv) * hd + heads * hd * d + 3 * d * ffn) + 2 * vocab * d
    kv_per_token = 2 * layers * kv * hd * 2  # bf16, per GPU (a shard's heads)
    start = StepModel(
        overhead_s=3e-4,
        seq_s=1e-6,
        token_s=2 * params / 500e12,
        attn_s=4 * layers * heads * hd / 500e12,
        weights_s=2 * params / 3e12,
        kv_s=kv_per_token / 3e12,
        overlap=True,
    )
    gpu, error = fit_gpu(steps, start)
    print(f"fit: median error {error:.1%}; worst {worst_steps(gpu, steps)}")
    kv_memory = props.total_memory * GPU_MEMORY_UTILIZATION - 2 * params - RUNTIME_RESERVE_BYTES
    shape = EngineShape(
        num_blocks=max(1, math.floor(kv_memory / (kv_per_token * 16))),
        block_size=16,
        max_num_batched_tokens=8192,
        max_num_seqs=1024,
        max_model_len=args.max_model_len,
    )
    name = args.name or f"{props.name.lower().replace(' ', '-')}-{args.model}"
    profile = Profile(
        name,
        f"{args.gpus}x {props.name}, {args.model}, bf16, measured by bench/gpu_steps.py",
        shape,
        replace(gpu, overhead_s=gpu.overhead_s + STEP_OVERHEAD_S),
    )
    save_profile(profile, args.out)
    print(f"wrote {args.out} ({shape.num_blocks} KV blocks of 16 tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
