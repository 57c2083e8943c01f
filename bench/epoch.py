"""Training throughput of a GLUE epoch: fishtune's setting (dynamic padding, optional length-grouped batches,
bf16 autocast on a GPU) against the paper's (every sample padded to 128, fp32), same model, same samples,
dense AdamW steps; samples/s of the training steps.

    python bench/epoch.py --quick
    python bench/epoch.py --model bert-base --random-init --device cuda --samples 2048 --batch 32
"""

from __future__ import annotations

import common
import torch


def _order(rows, batch: int, group: bool, seed: int):
    """Shuffled rows; with ``group``, sorted by length inside windows of 50 batches, batches shuffled."""
    gen = torch.Generator().manual_seed(seed)
    rows = [rows[i] for i in torch.randperm(len(rows), generator=gen).tolist()]
    if not group:
        return rows
    window = 50 * batch
    out = []
    for w in range(0, len(rows), window):
        out += sorted(rows[w : w + window], key=lambda r: len(r[0]))
    chunks = [out[i : i + batch] for i in range(0, len(out), batch)]
    return [r for i in torch.randperm(len(chunks), generator=gen).tolist() for r in chunks[i]]


def epoch(args, rows, pad_to, bf16: bool) -> float:
    """Seconds for one pass of training steps over ``rows`` (after one untimed warm-up step)."""
    model = common.build_model(args).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pad = model.config.pad_token_id
    data = common.batches(rows, args.batch, pad, pad_to=pad_to, device=args.device)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"

    def step(batch):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            loss = common.loss_of(model, batch)
        loss.backward()
        opt.step()

    step(data[0])
    seconds, _ = common.timed(lambda: [step(b) for b in data], args.device)
    return seconds


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--samples", type=int, default=None, help="default 32 with --quick, else 1024")
    p.add_argument("--batch", type=int, default=None, help="default 16 with --quick, else 32")
    p.add_argument("--group-by-length", action="store_true", help="length-grouped batches for ours")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="ours: bf16 autocast (auto: GPU)")
    args = p.parse_args()
    n = args.samples or (32 if args.quick else 1024)
    args.batch = args.batch or (16 if args.quick else 32)
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and args.device.startswith("cuda"))
    probe = common.build_model(args)
    vocab = probe.config.vocab_size
    del probe
    rows = common.tokenized(n, vocab, args.seed)
    t_ours = epoch(args, _order(rows, args.batch, args.group_by_length, args.seed), None, bf16)
    t_ref = epoch(args, _order(rows, args.batch, False, args.seed), 128, False)
    lengths = [len(r) for r, _ in rows]
    print(f"model {args.model} on {args.device}, {n} samples (mean length {sum(lengths) / n:.1f} tokens), "
          f"batch {args.batch}; ours: dynamic padding{', length-grouped' if args.group_by_length else ''}"
          f"{', bf16 autocast' if bf16 else ', fp32'}; reference: pad to 128, fp32")
    print(f"ours {t_ours:.2f} s, reference {t_ref:.2f} s")
    common.report("training throughput", n / t_ours, n / t_ref, "samples/s", higher_is_better=True)


if __name__ == "__main__":
    main()
