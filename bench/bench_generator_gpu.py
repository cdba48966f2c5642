"""Generator speed for the chat: a T5-base-sized model (random weights, nothing downloaded).

Builds ``T5ForConditionalGeneration`` from a t5-base-shaped ``T5Config`` (12+12 layers,
d_model 768, ~223M parameters) with random init, on CUDA in bfloat16 when available (the chat's
GPU policy), else on the CPU in float32, and reports for a batch of one prompt:

* first-token latency: wall time of ``generate(max_new_tokens=1)`` (encoder + first decoder
  step; what a user waits before the first streamed word);
* tokens/s: new tokens / wall time of ``generate`` forced to exactly ``--new-tokens`` tokens;

for greedy decoding, 4-beam search (the documented chat setting, not streamable) and the
streamed chat setting (sampling, top-p 0.85, temperature 1.1, one beam).

Self-contained: needs only torch and transformers.

    python bench/bench_generator_gpu.py [--input-tokens 512] [--new-tokens 200] [--repeats 3] [--cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def t5_base_config() -> Any:
    from transformers import T5Config

    config = T5Config(
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=12,
        num_decoder_layers=12,
        num_heads=12,
        relative_attention_num_buckets=32,
        dropout_rate=0.1,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
    )
    config.decoder_start_token_id = 0
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input-tokens", type=int, default=512, help="prompt length (the chat's max_input_tokens)")
    ap.add_argument("--new-tokens", type=int, help="generated tokens (default 200 on GPU, 32 on CPU)")
    ap.add_argument("--repeats", type=int, help="timed runs per row (default 3 on GPU, 1 on CPU)")
    ap.add_argument("--cpu", action="store_true", help="force the CPU even when CUDA is available")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import T5ForConditionalGeneration

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32  # the chat's policy: bf16 on GPU, fp32 on CPU
    new_tokens = args.new_tokens or (200 if cuda else 32)
    repeats = args.repeats or (3 if cuda else 1)
    name = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"

    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model: Any = T5ForConditionalGeneration(t5_base_config())
    model = model.to(dtype=dtype).eval()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, 32128, (1, args.input_tokens), generator=gen).to(device)
    attention_mask = torch.ones_like(input_ids)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def run(settings: dict[str, Any], n: int) -> tuple[float, int]:
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=n,
                min_new_tokens=n,  # random weights: never stop early, so every row makes n tokens
                **settings,
            )
        sync()
        return time.perf_counter() - start, int(out.shape[1] - 1)  # minus the decoder start token

    rows: list[tuple[str, dict[str, Any]]] = [
        ("greedy", {"do_sample": False, "num_beams": 1}),
        ("4-beam", {"do_sample": False, "num_beams": 4, "no_repeat_ngram_size": 4, "repetition_penalty": 1.8}),
        (
            "sample (chat stream)",
            {"do_sample": True, "num_beams": 1, "temperature": 1.1, "top_p": 0.85, "repetition_penalty": 1.8},
        ),
    ]
    run({"do_sample": False, "num_beams": 1}, 4)  # warm-up: kernels, allocator
    results = []
    for label, settings in rows:
        run(settings, 2)  # warm this decoding path too
        first = [run(settings, 1)[0] for _ in range(repeats)]
        full = [run(settings, new_tokens) for _ in range(repeats)]
        secs = statistics.median(t for t, _ in full)
        made = full[0][1]
        results.append((label, statistics.median(first) * 1e3, made / secs, secs, made))

    peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else ""
    print(
        f"\nT5-base-sized random model: {n_params / 1e6:.0f}M parameters, {dtype} on {name}{peak}\n"
        f"torch {torch.__version__}, transformers {transformers.__version__}; built in {build_s:.1f}s; "
        f"prompt {args.input_tokens} tokens, batch 1, median of {repeats}"
    )
    print(f"\n{'decoding':<22} {'first token ms':>15} {'tokens/s':>10} {'total s':>9} {'tokens':>7}")
    for label, first_ms, tps, secs, made in results:
        print(f"{label:<22} {first_ms:>15.1f} {tps:>10.1f} {secs:>9.2f} {made:>7}")


if __name__ == "__main__":
    main()
