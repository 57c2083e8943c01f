"""Sparse checkpoints: a masked fine-tune saved as its difference only (`save_delta`: indices + values + the
dense task head, safetensors) against the full model's safetensors; the delta applied onto a freshly loaded
pretrained model (`apply_delta`) must give bit-identical logits.

    python bench/sparse_checkpoint.py --quick
    python bench/sparse_checkpoint.py --model llama-3.2-1b --random-init --device cuda
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import common
import torch
from safetensors.torch import save_file

from fishtune.core.deltas import apply_delta, save_delta
from fishtune.core.masked import MaskedAdamW, apply_mask, merge
from fishtune.models import head_names


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--ratio", type=float, default=0.5, help="mask size, percent of the body's parameters")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    model = common.build_model(args)
    head = head_names(model)
    mask = common.random_mask(model, args.ratio, exclude=head, seed=args.seed)
    rows = common.tokenized(args.batch * args.steps, model.config.vocab_size, args.seed)
    data = common.batches(rows, args.batch, model.config.pad_token_id, device=args.device)
    apply_mask(model, mask, trainable=head)
    opt = MaskedAdamW(model, lr=1e-3, weight_decay=0.01)
    model.train()
    for batch in data:  # a few real steps so the delta is not zero
        opt.zero_grad(set_to_none=True)
        common.loss_of(model, batch).backward()
        opt.step()
    model.eval()
    probe = data[0]
    inputs = {k: v for k, v in probe.items() if k != "labels"}
    with torch.no_grad():
        trained = model(**inputs).logits
    with tempfile.TemporaryDirectory() as tmp:
        delta_bytes = save_delta(model, Path(tmp) / "delta.safetensors", head=head)
        merge(model)
        state = {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}
        full = Path(tmp) / "model.safetensors"
        # tied weights share storage: keep one copy, as save_pretrained does
        seen, unique = set(), {}
        for n, t in state.items():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if key not in seen:
                seen.add(key)
                unique[n] = t
        save_file(unique, str(full))
        full_bytes = full.stat().st_size
        with torch.no_grad():
            merged = model(**inputs).logits
        fresh = common.build_model(args, seed=args.seed + 1)  # a different head init: the delta brings the head
        apply_delta(fresh, Path(tmp) / "delta.safetensors")
        with torch.no_grad():
            restored = fresh(**inputs).logits
    same = torch.equal(restored, trained)
    print(f"model {args.model} on {args.device}: {mask.count} masked entries ({args.ratio:g}%), head {len(head)} "
          f"tensors; delta {delta_bytes / 2**20:.3f} MiB, full {full_bytes / 2**20:.1f} MiB")
    print(f"logits after apply_delta identical to the trained model's: {same} (max |diff| "
          f"{float((restored - trained).abs().max()):.3g}); merged model identical: {torch.equal(merged, trained)}")
    if not same:
        raise SystemExit("sparse checkpoint round trip changed the logits")
    common.report("checkpoint size", delta_bytes / 2**20, full_bytes / 2**20, "MiB", higher_is_better=False)


if __name__ == "__main__":
    main()
