"""fishtune: Fisher-information selective fine-tuning (FISH Mask, IRD) for any Hugging Face model.

The library in a few names (ratios are percent of the pretrained parameters, task head excluded):

    from fishtune import Selector, fish_mask, ird_walk, apply_mask, MaskedAdamW, merge, save_delta, apply_delta
    sel = Selector(model, tokenised_examples, collate, head=["classifier.weight", "classifier.bias"])
    mask, samples = fish_mask(sel, ratio=0.5, num_samples=128, seed=0)   # FISH Mask
    cells = ird_walk(sel, [128, 32, 16, 1], [2.5, 0.5, 0.1, 0.02], seed=0)  # IRD: every visited cell
    apply_mask(model, mask, trainable=sel.head)      # only the masked entries (and the head) train
    opt = MaskedAdamW(model, lr=5e-5)                # or transformers.Trainer, unchanged
    save_delta(model, "delta.safetensors", head=sel.head)   # indices + values; apply_delta() restores

Importing fishtune does not import Hydra, pandas or matplotlib.
"""

from .fisher import FisherResult, compute_fisher, per_sample_loss
from .ird import Cell, fish_ladder, grid, ird_walk, staircase
from .masked import MaskedAdamW, apply_delta, apply_mask, load_delta, merge, save_delta, sparse_delta, trainable_count
from .masks import Mask, mask_from_names, num_selected, select_top_k
from .models import head_names
from .selection import Selector, draw_samples, fish_mask

__version__ = "0.1.0"
__all__ = [
    "Cell", "FisherResult", "Mask", "MaskedAdamW", "Selector", "apply_delta", "apply_mask", "compute_fisher",
    "draw_samples", "fish_ladder", "fish_mask", "grid", "head_names", "ird_walk", "load_delta", "mask_from_names",
    "merge", "num_selected", "per_sample_loss", "save_delta", "select_top_k", "sparse_delta", "staircase",
    "trainable_count",
]
