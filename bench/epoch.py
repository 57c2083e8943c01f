"""Training throughput of a GLUE epoch: fishtune's setting (dynamic padding to a multiple of 8, bf16 autocast
on a GPU, optionally length-grouped batches) against the paper's (every sample padded to 128, fp32), same
model, same samples, dense AdamW steps; samples/s of the training steps.

    python bench/epoch.py --quick
    python bench/epoch.py --model bert-base --random-init --device cuda --samples 2048 --batch 32

Both sides are warmed up the same way before they are timed: one untimed training step on every distinct
batch shape the side will meet (cuBLAS/oneDNN heuristics, the allocator), then the initial weights and a
fresh optimizer are restored. The shapes of each side are printed. Ours is timed both with and without
length-grouped batches; ``--group-by-length`` picks which of the two the last line reports.
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


def _batches(rows, batch: int, pad: int, pad_to: int | None, multiple: int, device):
    """Batches padded to ``pad_to``, else to the longest row rounded up to a multiple of ``multiple``."""
    out = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        longest = max(len(r) for r, _ in chunk)
        width = pad_to or -(-longest // multiple) * multiple
        out.append(common.collate(chunk, pad, pad_to=width, device=device))
    return out


def _shapes(data) -> list[tuple[int, int]]:
    return sorted({tuple(b["input_ids"].shape) for b in data}, key=lambda s: (s[1], s[0]))


def epoch(args, data, bf16: bool) -> float:
    """Seconds for one pass of training steps over ``data``, after one untimed step per distinct shape."""
    model = common.build_model(args).train()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    kind = "cuda" if args.device.startswith("cuda") else "cpu"

    def step(opt, batch):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            loss = common.loss_of(model, batch)
        loss.backward()
        opt.step()

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    firsts = {}
    for b in data:
        firsts.setdefault(tuple(b["input_ids"].shape), b)
    for b in firsts.values():
        step(opt, b)
    common.sync(args.device)
    model.load_state_dict(init)
    del init
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    seconds, _ = common.timed(lambda: [step(opt, b) for b in data], args.device)
    return seconds


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--samples", type=int, default=None, help="default 32 with --quick, else 1024")
    p.add_argument("--batch", type=int, default=None, help="default 16 with --quick, else 32")
    p.add_argument("--group-by-length", action="store_true",
                   help="the last line reports ours with length-grouped batches")
    p.add_argument("--pad-multiple", type=int, default=8, help="ours: pad each batch to a multiple of this")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="ours: bf16 autocast (auto: GPU)")
    args = p.parse_args()
    n = args.samples or (32 if args.quick else 1024)
    args.batch = args.batch or (16 if args.quick else 32)
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and args.device.startswith("cuda"))
    probe = common.build_model(args)
    vocab, pad = probe.config.vocab_size, probe.config.pad_token_id
    del probe
    rows = common.tokenized(n, vocab, args.seed)
    lengths = [len(r) for r, _ in rows]
    print(f"model {args.model} on {args.device}, {n} samples (mean length {sum(lengths) / n:.1f}, longest "
          f"{max(lengths)} tokens), batch {args.batch}; shapes are batch × length")
    ours = f"ours (pad to a multiple of {args.pad_multiple}, {'bf16 autocast' if bf16 else 'fp32'})"
    sides = {"reference (pad to 128, fp32)": (False, 128, False), ours: (False, None, bf16),
             "ours + length-grouped batches": (True, None, bf16)}
    times = {}
    for name, (group, pad_to, half) in sides.items():
        data = _batches(_order(rows, args.batch, group, args.seed), args.batch, pad, pad_to, args.pad_multiple,
                        args.device)
        shapes = _shapes(data)
        times[name] = epoch(args, data, half)
        print(f"{name}: {times[name]:.2f} s, {n / times[name]:.4g} samples/s; {len(shapes)} shapes: "
              + ", ".join(f"{b}×{t}" for b, t in shapes), flush=True)
    t_ref, t_plain, t_group = times.values()
    common.report("training throughput", n / (t_group if args.group_by_length else t_plain), n / t_ref,
                  "samples/s", higher_is_better=True)


if __name__ == "__main__":
    main()
