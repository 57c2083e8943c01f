"""Fisher throughput: fishtune's batched per-sample engine ("hooks") against the reference batch-size-1 loop
("loop"), same model, same samples, one run; both results are checked to agree.

    python bench/fisher.py --quick
    python bench/fisher.py --model bert-base --random-init --device cuda --samples 256 --seq 128
"""

from __future__ import annotations

import common
import torch

from fishtune.fisher import compute_fisher


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--samples", type=int, default=None, help="samples both engines score (default 32 with --quick, else 128)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=None, help="pad every sample to this length (default: dynamic)")
    p.add_argument("--chunk", type=int, default=None, help="hooks chunk size (default: memory budget)")
    args = p.parse_args()
    n = args.samples or (32 if args.quick else 128)
    model = common.build_model(args)
    pad = model.config.pad_token_id
    rows = common.tokenized(n, model.config.vocab_size, args.seed)
    if args.seq:  # fixed-length samples (the 32 × 128 setting): random ids fill every position
        gen = torch.Generator().manual_seed(args.seed)
        rows = [(torch.randint(3, model.config.vocab_size, (args.seq,), generator=gen).tolist(), y) for _, y in rows]
    data = common.batches(rows, args.batch, pad, device=args.device)
    if args.chunk:
        import os

        os.environ["FISHTUNE_FISHER_CHUNK"] = str(args.chunk)
    # warm-up on a few samples (allocator, kernels), not timed
    warm = [common.collate(rows[:4], pad, device=args.device)]
    for engine in ("hooks", "loop"):
        compute_fisher(model, warm, engine=engine, progress=False)
    t_ours, ours = common.timed(lambda: compute_fisher(model, data, engine="hooks", progress=False), args.device)
    t_ref, ref = common.timed(lambda: compute_fisher(model, data, engine="loop", progress=False), args.device)
    scale = max(float(v.abs().max()) for v in ref.diag.values())
    err = max(float(((ours.diag[k] - ref.diag[k]).abs() / (ref.diag[k].abs() + 1e-6 * scale)).max()) for k in ref.diag)
    params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model} ({params / 1e6:.1f}M params{', random init' if args.random_init else ''}) on "
          f"{args.device}, {n} samples, batch {args.batch}, seq {args.seq or 'dynamic'}")
    print(f"hooks: {t_ours:.2f} s, loop: {t_ref:.2f} s; max relative difference {err:.2e} (atol 1e-6 × max)")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    common.report("fisher throughput", n / t_ours, n / t_ref, "samples/s", higher_is_better=True)


if __name__ == "__main__":
    main()
