"""Fisher throughput: fishtune's batched per-sample engine ("hooks") against the reference batch-size-1 loop
("loop", float32 with TF32 off), same model, same samples, one run; the results are checked to agree.

    python bench/fisher.py --quick
    python bench/fisher.py --model bert-base --random-init --device cuda --samples 256 --seq 128 --precision bf16

``--precision tf32|bf16`` times the hooks engine at that precision (fisher.py, ``precision``) and also runs
the exact float32 hooks engine, printing how far each is from the loop: max relative difference per entry
(absolute floor 1e-6 × the largest entry), the relative L1 difference Σ|ours − ref| / Σ ref, and the overlap
of the global top-0.5 % entries (the mask FISH would pick).
"""

from __future__ import annotations

import common
import torch

from fishtune.core.fisher import PRECISIONS, compute_fisher


def _agreement(ours, ref) -> str:
    scale = max(float(v.abs().max()) for v in ref.diag.values())
    err = max(float(((ours.diag[k] - ref.diag[k]).abs() / (ref.diag[k].abs() + 1e-6 * scale)).max())
              for k in ref.diag)
    l1 = sum(float((ours.diag[k] - ref.diag[k]).abs().sum(dtype=torch.float64)) for k in ref.diag)
    mass = sum(float(ref.diag[k].abs().sum(dtype=torch.float64)) for k in ref.diag)
    try:
        a, b = (torch.cat([r.diag[k].reshape(-1) for k in ref.diag]) for r in (ours, ref))
        k = max(1, int(0.005 * a.numel()))
        ia, ib = torch.topk(a, k).indices, torch.topk(b, k).indices
        del a, b
        hit = torch.zeros(sum(v.numel() for v in ref.diag.values()), dtype=torch.bool, device=ia.device)
        hit[ib] = True
        overlap = f"{float(hit[ia].sum()) / k:.4f}"
    except RuntimeError as e:  # e.g. out of memory on a large model
        overlap = f"n/a ({str(e).splitlines()[0][:60]})"
    return (f"max relative difference {err:.2e} (atol 1e-6 × max), relative L1 {l1 / mass:.2e}, "
            f"top-0.5% overlap {overlap}")


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--samples", type=int, default=None,
                   help="samples both engines score (default 32 with --quick, else 128)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=None, help="pad every sample to this length (default: dynamic)")
    p.add_argument("--chunk", type=int, default=None, help="hooks chunk size (default: memory budget)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="hooks engine's precision (timed)")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference: exact float32 (PyTorch's default)
    n = args.samples or (32 if args.quick else 128)
    model = common.build_model(args)
    pad = model.config.pad_token_id
    rows = common.tokenized(n, model.config.vocab_size, args.seed)
    if args.seq:  # fixed-length samples (the 32 × 128 setting): random ids fill every position
        gen = torch.Generator().manual_seed(args.seed)
        rows = [(torch.randint(3, model.config.vocab_size, (args.seq,), generator=gen).tolist(), y) for _, y in rows]
    data = common.batches(rows, args.batch, pad)  # host batches, as a DataLoader gives them; engines move them
    if args.chunk:
        import os

        os.environ["FISHTUNE_FISHER_CHUNK"] = str(args.chunk)

    def run(engine, precision="fp32", batches=data):
        return compute_fisher(model, batches, engine=engine, precision=precision, progress=False)

    # warm-up, not timed: one full batch for the hooks engine (its chunk shapes, the allocator), 4 samples
    # of it for the loop
    precisions = dict.fromkeys([args.precision, "fp32"])
    for prec in precisions:
        run("hooks", prec, data[:1])
    run("loop", batches=[{k: v[:4] for k, v in data[0].items()}])
    t_ours, ours = common.timed(lambda: run("hooks", args.precision), args.device)
    t_ref, ref = common.timed(lambda: run("loop"), args.device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model} ({params / 1e6:.1f}M params{', random init' if args.random_init else ''}) on "
          f"{args.device}, {n} samples, batch {args.batch}, seq {args.seq or 'dynamic'}; reference: loop, fp32, "
          f"TF32 off; ours: hooks, {args.precision}")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    if args.precision != "fp32":
        print(f"hooks {args.precision}: {t_ours:.2f} s, loop: {t_ref:.2f} s; {args.precision} hooks vs loop: "
              f"{_agreement(ours, ref)}")
        del ours
        t_exact, exact = common.timed(lambda: run("hooks"), args.device)
        print(f"hooks fp32: {t_exact:.2f} s ({n / t_exact:.4g} samples/s, {t_ref / t_exact:.3g}× the loop); "
              f"fp32 hooks vs loop: {_agreement(exact, ref)}")
    else:
        print(f"hooks: {t_ours:.2f} s, loop: {t_ref:.2f} s; hooks vs loop: {_agreement(ours, ref)}")
    common.report("fisher throughput", n / t_ours, n / t_ref, "samples/s", higher_is_better=True)


if __name__ == "__main__":
    main()
