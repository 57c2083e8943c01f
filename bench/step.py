"""One training step, masked at 0.5 % against dense, through the code `run.py` trains with
(`apply_mask` + `MaskedAdamW` + `fishtune.train.loop.train_step`; the dense side is `method=dense`'s step:
every parameter trainable, the same optimizer class). Both models are built alike from one seed and timed
step by step, interleaved, after warm-up; the median step is reported.

Default (`--quick`): BERT-base's topology at toy width (12 layers, hidden 32, vocabulary 512), batch 32 × 24
tokens, one CPU thread: the step is all per-tensor overhead, like a launch-bound GPU step. `--model minilm`
uses real MiniLM; `--model bert-base|llama-3.2-1b --random-init --device cuda` the paper's sizes.
`--mask fish` trains a FISH mask (64 SST-2 sentences) instead of a random one, and `--weight-grad blocks`
has masked Linear layers compute only the rows or columns of dW holding its entries (`apply_mask`): on
real MiniLM weights a FISH mask sits in a few columns per matrix, so most of dW = dYᵀX is skipped.

    python bench/step.py --quick
    python bench/step.py --model bert-base --random-init --device cuda --batch 32 --seq 128
    python bench/step.py --model minilm --mask fish --weight-grad blocks --threads 2 --batch 32 --seq 64
"""

from __future__ import annotations

import statistics

import common
import torch

from fishtune.core.masked import MaskedAdamW, apply_mask, weight_grad_summary
from fishtune.models import head_names
from fishtune.train.loop import train_step


def toy_bert(seed: int, device: str):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(cfg).to(device)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--ratio", type=float, default=0.5, help="mask size, percent of the body's parameters")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=24)
    p.add_argument("--steps", type=int, default=None, help="timed steps per side (default 30, GPU 50)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the proxy uses one)")
    p.add_argument("--mask", default="random", choices=["random", "fish", "columns"],
                   help="columns: common.column_mask, a few input features per matrix (FISH's shape)")
    p.add_argument("--weight-grad", default="dense", choices=["dense", "blocks"], help="apply_mask's option")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    steps = args.steps or (50 if cuda else 30)
    build = (lambda: toy_bert(args.seed, args.device)) if args.quick else (lambda: common.build_model(args))
    models = {"dense": build().train(), "masked": build().train()}
    masked = models["masked"]
    head = head_names(masked)
    mask = common.make_mask(args.mask, masked, args.ratio, head, args.seed)
    apply_mask(masked, mask, trainable=head, weight_grad=args.weight_grad)
    if args.weight_grad == "blocks":  # the same mask with autograd's dense dW, timed beside it
        models["masked, dense dW"] = apply_mask(build().train(), mask, trainable=head)
    blocks = weight_grad_summary(masked)
    if blocks["blocked"]:
        print(f"weight_grad=blocks: {blocks['blocked']} of {blocks['matrices']} masked matrices compute a block of "
              f"dW, {blocks['block_share_percent']:.1f} % of their full products")
    opts = {k: MaskedAdamW(m, lr=1e-4) for k, m in models.items()}
    cfg = models["dense"].config
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, cfg.vocab_size, (args.batch, args.seq), generator=gen)
    batch = {"input_ids": ids.to(args.device), "attention_mask": torch.ones_like(ids).to(args.device),
             "labels": torch.randint(0, 2, (args.batch,), generator=gen).to(args.device)}
    device = torch.device(args.device)
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(steps + 5):  # interleaved; the first 5 of each are warm-up
        for kind, model in models.items():
            t, _ = common.timed(lambda m=model, o=opts[kind]: train_step(m, batch, o, device, bf16=cuda), args.device)
            if i >= 5:
                times[kind].append(t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    what = "toy BERT (12 × 32, vocab 512)" if args.quick else args.model
    print(f"{what} on {args.device} ({args.threads} thread{'s' * (args.threads > 1)}), batch {args.batch} × "
          f"{args.seq}{', bf16 autocast' if cuda else ''}; mask {mask.count} entries ({args.ratio:g}%, {args.mask}, "
          f"{len(mask.indices)} tensors, weight_grad={args.weight_grad}) + head; median of {steps} steps")
    if cuda:
        print(f"peak GPU memory (all models) {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    if "masked, dense dW" in med:
        common.report("masked step (weight_grad blocks vs dense dW)", med["masked"], med["masked, dense dW"],
                      "ms", higher_is_better=False)
    common.report(f"training step (masked {args.ratio:g} % vs dense)", med["masked"], med["dense"], "ms",
                  higher_is_better=False)


if __name__ == "__main__":
    main()
