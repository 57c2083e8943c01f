"""Memory and step time of selective fine-tuning: bytes held in gradients + optimizer state after a real
training step, bytes autograd keeps for the backward, step time and (on a GPU) peak memory, for dense
fine-tuning, the reference masked way (dense gradients × mask, dense AdamW), fishtune's masked training
(`apply_mask` + `MaskedAdamW`, the step `run.py` takes) and peft LoRA r=8. Every optimizer is AdamW (fused
on CUDA); bf16 autocast on CUDA. The last lines compare ours with dense fine-tuning and with LoRA.
`--mask fish` uses one FISH mask (64 SST-2 sentences) for every kind instead of a random one, and
`--weight-grad blocks` trains ours with `apply_mask(weight_grad="blocks")`: a masked Linear then keeps only
the input columns its dW block needs for the backward, not the whole input.

    python bench/masked_memory.py --quick
    python bench/masked_memory.py --model bert-base --random-init --device cuda --batch 32 --seq 128
    python bench/masked_memory.py --model llama-3.2-1b --random-init --device cuda --batch 8 --seq 256
    python bench/masked_memory.py --quick --mask fish --weight-grad blocks
"""

from __future__ import annotations

import gc
import statistics

import common
import torch

from fishtune.core.masked import MaskedAdamW, apply_mask
from fishtune.models import head_names
from fishtune.train.loop import train_step

KINDS = ("dense", "dense-mask", "sparse", "sparse-noemb", "lora-r8")  # sparse-noemb: embeddings left out


def _held(model, opt) -> int:
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    state = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return grads + state


def _adamw(params, device: str):
    return torch.optim.AdamW(params, lr=1e-4, fused=True if device.startswith("cuda") else None)


def _setup(kind: str, model, mask, head, device: str, weight_grad: str = "dense"):
    """(model, optimizer) for one training kind."""
    if kind == "dense":
        return model, _adamw(model.parameters(), device)
    if kind == "dense-mask":
        dense = {n: mask.dense(n).to(p.device) for n, p in model.named_parameters() if n in mask.indices}
        for n, p in model.named_parameters():
            if n in dense:
                p.register_hook(lambda g, m=dense[n]: g * m)
        return model, _adamw(model.parameters(), device)
    if kind in ("sparse", "sparse-noemb"):
        if kind == "sparse-noemb":
            emb = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding) for n in [n + ".weight"]}
            mask = type(mask)({n: i for n, i in mask.indices.items() if n not in emb}, mask.shapes)
        apply_mask(model, mask, trainable=head, weight_grad=weight_grad)
        return model, MaskedAdamW(model, lr=1e-4)
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16))
    return model, _adamw([p for p in model.parameters() if p.requires_grad], device)


class _Saved:
    """Counts the bytes autograd saves for backward (parameters and masked weights left out: held anyway)."""

    def __init__(self, model) -> None:
        self.held = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
        self.bytes = 0

    def pack(self, t):
        if id(t) not in self.held and id(t._base) not in self.held:
            self.bytes += t.numel() * t.element_size()
        return t


def run(args, kind: str, data, ratio: float, mask=None) -> tuple[int, float, float, int]:
    """(bytes held in grads + optimizer state, median step seconds, peak GPU bytes or 0, bytes autograd
    keeps for one backward beyond the parameters). ``mask``: None makes ``--mask``'s for this model."""
    model = common.build_model(args)
    head = head_names(model)
    if mask is None:
        mask = common.make_mask(args.mask, model, ratio, head, args.seed)
    model, opt = _setup(kind, model, mask, head, args.device, args.weight_grad)
    model.train()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    saved = _Saved(model)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        train_step(model, data[0], opt, device, bf16=cuda)  # allocates the optimizer state; counts saved bytes
    held = _held(model, opt)
    for batch in data[1:3]:  # warm-up
        train_step(model, batch, opt, device, bf16=cuda)
    times = []
    for batch in data[3:]:
        t, _ = common.timed(lambda b=batch: train_step(model, b, opt, device, bf16=cuda), args.device)
        times.append(t)
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    model = opt = None  # free before the next kind is built
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return held, statistics.median(times), peak, saved.bytes


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--ratio", type=float, default=0.5, help="mask size, percent of the body's parameters")
    p.add_argument("--batch", type=int, default=None, help="default 8 with --quick, else 16")
    p.add_argument("--seq", type=int, default=None, help="pad every sample to this length (default: dynamic)")
    p.add_argument("--steps", type=int, default=None, help="timed steps after 3 untimed (default 2 / 10)")
    p.add_argument("--mask", default="random", choices=["random", "fish"])
    p.add_argument("--weight-grad", default="dense", choices=["dense", "blocks"], help="apply_mask's option (ours)")
    args = p.parse_args()
    steps = 3 + (args.steps or (2 if args.quick else 10))
    args.batch = args.batch or (8 if args.quick else 16)
    cfg = common._config(args.model)  # no model built just to read its sizes
    pad, vocab = cfg.pad_token_id or 0, cfg.vocab_size
    rows = common.tokenized(args.batch * steps, vocab, args.seed)
    if args.seq:
        gen = torch.Generator().manual_seed(args.seed)
        rows = [(torch.randint(3, vocab, (args.seq,), generator=gen).tolist(), y) for _, y in rows]
    data = common.batches(rows, args.batch, pad, pad_to=args.seq, device=args.device)
    mask = None
    if args.mask == "fish":  # the Fisher once, not once per kind
        model = common.build_model(args)
        mask = common.make_mask("fish", model, args.ratio, head_names(model), args.seed)
        del model
    out = {}
    for kind in [k for k in KINDS if not (args.quick and k == "sparse-noemb")]:  # a GPU diagnostic
        out[kind] = run(args, kind, data, args.ratio, mask)
        held, t, peak, kept = out[kind]
        gpu = f", peak GPU {peak / 2**30:.2f} GiB" if peak else ""
        print(f"{kind:>11}: grads + optimizer state {held / 2**20:10.3f} MiB, kept for backward "
              f"{kept / 2**20:9.2f} MiB, step {t * 1e3:8.1f} ms{gpu}", flush=True)
    ours, ref, dense, lora = out["sparse"], out["dense-mask"], out["dense"], out["lora-r8"]
    print(f"model {args.model}, batch {args.batch} × {args.seq or 'dynamic'}, {args.device}"
          f"{', bf16 autocast' if args.device.startswith('cuda') else ''}, mask {args.ratio:g}% {args.mask}, "
          f"ours weight_grad={args.weight_grad}")
    common.report(f"grads+optimizer memory at {args.ratio:g}% mask (sparse vs dense-grad×mask)",
                  ours[0] / 2**20, ref[0] / 2**20, "MiB", higher_is_better=False)
    common.report("step time (sparse vs dense-grad×mask)", ours[1] * 1e3, ref[1] * 1e3, "ms", higher_is_better=False)
    common.report("step time (sparse vs LoRA r=8)", ours[1] * 1e3, lora[1] * 1e3, "ms", higher_is_better=False)
    if ours[2]:
        common.report("peak GPU memory (sparse vs LoRA r=8)", ours[2] / 2**30, lora[2] / 2**30, "GiB",
                      higher_is_better=False)
    common.report(f"training step (masked {args.ratio:g} % vs dense)", ours[1] * 1e3, dense[1] * 1e3, "ms",
                  higher_is_better=False)


if __name__ == "__main__":
    main()
