"""Memory of selective fine-tuning: bytes held in gradients + optimizer state after a real training step, and
step time, for dense fine-tuning, the reference masked way (dense gradients × mask, dense AdamW), fishtune's
sparse masked training (`apply_mask` + `MaskedAdamW`) and peft LoRA r=8. On a GPU the peak memory of each
is printed too. The last line compares ours with the reference masked way.

    python bench/masked_memory.py --quick
    python bench/masked_memory.py --model llama-3.2-1b --random-init --device cuda --batch 8 --seq 256
"""

from __future__ import annotations

import gc

import common
import torch

from fishtune.masked import MaskedAdamW, apply_mask, recompute_weights
from fishtune.models import head_names


def _held(model, opt) -> int:
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    state = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return grads + state


def _setup(kind: str, model, mask, head, lr: float):
    """(model, optimizer, after_backward) for one training kind."""
    if kind == "dense":
        return model, torch.optim.AdamW(model.parameters(), lr=lr), None
    if kind == "dense-mask":
        dense = {n: mask.dense(n).to(p.device) for n, p in model.named_parameters() if n in mask.indices}
        params = dict(model.named_parameters())

        def after_backward():
            for n, m in dense.items():
                params[n].grad.mul_(m)

        return model, torch.optim.AdamW(model.parameters(), lr=lr), after_backward
    if kind in ("sparse", "sparse-keep"):
        apply_mask(model, mask, trainable=head)
        return model, MaskedAdamW(model, lr=lr), None
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16))
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr), None


def run(args, kind: str, data, ratio: float) -> tuple[int, float, float, int]:
    """(bytes held in grads + optimizer state, mean step seconds, peak GPU bytes or 0, bytes autograd keeps
    for one backward beyond the parameters: activations and, for sparse-keep, the W0+delta copies)."""
    model = common.build_model(args)
    head = head_names(model)
    mask = common.random_mask(model, ratio, exclude=head, seed=args.seed)
    model, opt, after_backward = _setup(kind, model, mask, head, lr=1e-4)
    model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda"))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    saved: dict = {}

    def step(batch):
        opt.zero_grad(set_to_none=True)
        saved.clear()
        with autocast, recompute_weights(enabled=kind == "sparse", stats=saved):
            loss = common.loss_of(model, batch)
        loss.backward()
        if after_backward:
            after_backward()
        opt.step()

    times = []
    for i, batch in enumerate(data):
        t, _ = common.timed(lambda b=batch: step(b), args.device)
        if i:  # the first step allocates the optimizer state
            times.append(t)
    held = _held(model, opt)
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else 0
    del model, opt
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return held, sum(times) / len(times), peak, saved.get("saved_bytes", 0)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--ratio", type=float, default=0.5, help="mask size, percent of the body's parameters")
    p.add_argument("--batch", type=int, default=None, help="default 8 with --quick, else 16")
    p.add_argument("--seq", type=int, default=None, help="pad every sample to this length (default: dynamic)")
    p.add_argument("--steps", type=int, default=None, help="timed steps after the first (default 2 / 5)")
    args = p.parse_args()
    steps = 1 + (args.steps or (2 if args.quick else 5))
    args.batch = args.batch or (8 if args.quick else 16)
    probe = common.build_model(args)
    pad, vocab = probe.config.pad_token_id, probe.config.vocab_size
    del probe
    rows = common.tokenized(args.batch * steps, vocab, args.seed)
    if args.seq:
        gen = torch.Generator().manual_seed(args.seed)
        rows = [(torch.randint(3, vocab, (args.seq,), generator=gen).tolist(), y) for _, y in rows]
    data = common.batches(rows, args.batch, pad, pad_to=args.seq, device=args.device)
    out = {}
    for kind in ("dense", "dense-mask", "sparse-keep", "sparse", "lora-r8"):
        out[kind] = run(args, kind, data, args.ratio)
        held, t, peak, kept = out[kind]
        gpu = f", peak GPU {peak / 2**30:.2f} GiB" if peak else ""
        print(f"{kind:>11}: grads + optimizer state {held / 2**20:10.3f} MiB, kept for backward "
              f"{kept / 2**20:9.2f} MiB, step {t * 1e3:8.1f} ms{gpu}", flush=True)
    ours, ref, lora = out["sparse"], out["dense-mask"], out["lora-r8"]
    print(f"sparse vs LoRA r=8: memory held {ours[0] / lora[0]:.3g}× LoRA's, step time {ours[1] / lora[1]:.3g}× "
          f"LoRA's" + (f", peak {ours[2] / lora[2]:.3g}× LoRA's" if ours[2] else ""))
    print(f"kept for backward (recompute_weights vs keeping W0+delta): {out['sparse'][3] / 2**20:.2f} MiB vs "
          f"{out['sparse-keep'][3] / 2**20:.2f} MiB; LoRA r=8 {lora[3] / 2**20:.2f} MiB")
    common.report("step time (sparse vs dense-grad×mask)", ours[1] * 1e3, ref[1] * 1e3, "ms", higher_is_better=False)
    common.report(f"grads+optimizer memory at {args.ratio:g}% mask (sparse vs dense-grad×mask)",
                  ours[0] / 2**20, ref[0] / 2**20, "MiB", higher_is_better=False)


if __name__ == "__main__":
    main()
