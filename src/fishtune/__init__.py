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

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module; loaded on first use, so `import fishtune.report` or `fishtune.runner.results` stays
# light
_EXPORTS = {
    **dict.fromkeys(["FisherResult", "compute_fisher", "per_sample_loss"], "core.fisher"),
    **dict.fromkeys(["Cell", "fish_ladder", "grid", "ird_walk", "staircase"], "core.ird"),
    **dict.fromkeys(["MaskedAdamW", "apply_mask", "merge", "masked_tensors", "sync_weights", "trainable_count",
                     "weight_grad_summary"], "core.masked"),
    **dict.fromkeys(["apply_delta", "load_delta", "save_delta", "sparse_delta"], "core.deltas"),
    **dict.fromkeys(["Mask", "mask_from_names", "num_selected", "select_top_k"], "core.masks"),
    "head_names": "models",
    **dict.fromkeys(["Selector", "draw_samples", "fish_mask"], "core.selection"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fishtune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .core.deltas import apply_delta, load_delta, save_delta, sparse_delta  # noqa: F401
    from .core.fisher import FisherResult, compute_fisher, per_sample_loss  # noqa: F401
    from .core.ird import Cell, fish_ladder, grid, ird_walk, staircase  # noqa: F401
    from .core.masked import (  # noqa: F401
        MaskedAdamW,
        apply_mask,
        masked_tensors,
        merge,
        sync_weights,
        trainable_count,
        weight_grad_summary,
    )
    from .core.masks import Mask, mask_from_names, num_selected, select_top_k  # noqa: F401
    from .core.selection import Selector, draw_samples, fish_mask  # noqa: F401
    from .models import head_names  # noqa: F401
