"""One run, end to end and resumable: check → prepare → plans → train each cell → write the run.

`run_experiment(rc, out_dir)` is what `run.py` calls after validating the config. The phases hand over
dataclasses: `_check` (the config alone: method options, sparsity, cell) → `_prepare` (data, model with its
seeded head, tokens, collator, selector: a `Prepared`) → `_plans` (selection first: every plan's mask is
computed and saved, with its head, before any fine-tuning) → `_train_cells` (each from the same pretrained
weights and head, each finished cell written at once as ``cells/<cell>.json``, a `CellResult`) → the
`RunResult` as ``result.json``, last. A job's resume key (`config_hash`) covers only what changes a result,
so a finished run or cell is found again whoever wrote it (a full ladder or a ``cell=`` job), and the
contents of the files it reads must still match (`runner.resume`). A cell's masks file is written only once
the cell trained ``ok``, just before its cell file: a rerun that fails never replaces a finished cell's masks.
"""

from __future__ import annotations

import copy
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..config import ConfigError, RunConfig
from ..core.deltas import save_delta
from ..core.files import digest
from ..core.masked import apply_mask, merge, trainable_count, weight_grad_summary
from ..core.selection import Selector
from ..data.glue import DataUnavailable, load_task, tokenize
from ..data.metrics import majority_score
from ..methods import Context, Plan, create, names
from ..models import ModelUnavailable, load_model
from ..train.loop import NonFiniteLoss, fit, planned_steps
from .results import CellResult, RunResult, cell_json, read_cell, read_result, write_json, write_unless_ok
from .resume import config_hash, done, finished, input_files, same_inputs, versions
from .select_only import write_selection

__all__ = ["run_experiment", "resolve_device", "check", "config_hash", "finished", "input_files", "same_inputs"]

def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: CUDA is not available on this machine (use device=cpu or device=auto)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _peak_memory(device: torch.device) -> dict[str, float]:
    out = {"cpu_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


@dataclass
class Prepared:
    """What the prepare phase hands over: tokenised data, the model with its seeded head, the collator and
    the selector (Fisher, top-k) over the training set."""

    data: Any
    model: torch.nn.Module
    head: list[str]
    collate: Any
    selector: Selector
    device: torch.device


def check(rc: RunConfig, out_dir: str | Path | None = None):
    """Every check a run makes before it reads any data (``dry_run`` makes them too): the method's options,
    the sparsity and the cell, the device, a ``mask.load`` file's contents, and in ``out_dir`` no folder
    where a result or masks file belongs. The method."""
    method = _check(rc)
    resolve_device(rc.device)
    if rc.mask.load:
        from ..core.masks import Mask

        try:
            Mask.load(rc.mask.load)
        except ValueError as e:
            raise ConfigError(f"mask.load: {e}") from None
    if out_dir is not None:
        out = Path(out_dir)
        cells = ["main"] if rc.mask.load else method.cell_names(rc.sparsity, rc.ladder)
        expected = [out / "result.json", *(out / d / f"{c}.{ext}" for c in cells
                                           for d, ext in (("cells", "json"), ("masks", "safetensors"),
                                                          ("deltas", "safetensors")))]
        for path in expected:
            if path.is_dir() or (path.parent != out and path.parent.exists() and not path.parent.is_dir()):
                where = path if path.is_dir() else path.parent
                raise ValueError(f"{where}: {'a folder' if where.is_dir() else 'a file'} where fishtune writes "
                                 f"{'a file' if where.is_dir() else 'a folder'} (move it away)")
    return method


def run_experiment(rc: RunConfig, out_dir: str | Path, config: dict[str, Any], log=print,
                   before_cell=None) -> dict[str, Any]:
    """Run (or resume) the job described by ``rc`` in ``out_dir``; return the result written there.

    Phases: check (config only) → prepare (data, model, collate, selector) → plans (the method's selection,
    masks saved) → train each pending cell (each written at once) → write the run.
    ``config`` is the resolved config as plain data (recorded; `config_hash` of it recognises finished work).
    Raises ConfigError/ValueError for bad input found before training; data missing offline gives a
    ``skipped`` result, a non-finite loss a ``failed`` one (with the step).
    ``before_cell(name)``, when given, is called before each cell is trained and may raise to stop the
    run there (the Slurm launcher's stop on SIGTERM); finished cells stay on disk.
    """
    out = Path(out_dir)
    chash = config_hash(config)
    if done := finished(rc, out, chash):
        log(f"already complete: {done}" if rc.cell is None else f"cell {rc.cell}: already complete ({done})")
        return read_result(done)
    result_path = out / "result.json"
    method = check(rc, out)
    device = resolve_device(rc.device)
    files = input_files(rc)
    run = RunResult(task=rc.task.name, model=rc.model.name, method=method.name, sparsity=rc.sparsity.name,
                    ratio=rc.sparsity.ratio, ratio_fixed=method.ratio_fixed, seed=rc.seed, config=config,
                    config_hash=chash, versions=versions(), device=str(device),
                    inputs={k: digest(p) for k, p in files.items()})
    t0 = time.perf_counter()
    prep = _prepare(rc, method, run, result_path, device)
    timings = {"load_seconds": time.perf_counter() - t0}
    t1 = time.perf_counter()
    plans = _plans(rc, method, prep, out)
    timings["selection_seconds"] = time.perf_counter() - t1
    run.total_params, run.head_params, run.fisher_engine = (prep.selector.num_params, prep.selector.num_head,
                                                            rc.fisher.engine)
    if rc.select_only:  # the masks and their summaries only (runner.select_only): nothing is fine-tuned
        timings["total_seconds"] = time.perf_counter() - t0
        return write_selection(rc, run, prep.selector, plans, out, timings, _peak_memory(device))
    cells = _train_cells(rc, method, prep, plans, run, out, log, before_cell, files)
    timings["total_seconds"] = time.perf_counter() - t0
    result = _summarise(run, cells, plans, timings, device).to_json()
    if rc.cell is None:
        (write_json if result["status"] == "ok" else write_unless_ok)(result_path, result)
    return result


def _check(rc: RunConfig):
    """The method, with everything the config alone can tell checked (options, sparsity, the cell)."""
    method = create(rc.method)
    unknown = sorted(set(rc.train.method_lr) - set(names()))
    if unknown:
        raise ConfigError(f"train.method_lr.{unknown[0]}: not a method ({', '.join(names())})")
    if not rc.mask.load:  # a loaded mask is trained as it is, whatever the sparsity
        method.check_sparsity(rc.sparsity)
    cells = ["main"] if rc.mask.load else method.cell_names(rc.sparsity, rc.ladder)
    if rc.cell is not None and rc.cell not in cells:
        raise ConfigError(f"cell={rc.cell}: not a cell of this job ({', '.join(cells)})")
    return method


def _prepare(rc: RunConfig, method, run: RunResult, result_path: Path, device) -> Prepared:
    """Data (checked), the model with the seeded head (checked against the options), tokens, collator and
    selector. Data missing offline or a model that cannot load is recorded (never over an ok result)."""
    try:
        raw = load_task(rc.task, rc.data, rc.seed)
    except DataUnavailable as e:
        write_unless_ok(result_path, replace(run, status="skipped", reason=str(e)).to_json())
        raise
    _check_sizes(rc, method, len(raw.train))
    run.majority = float(sum(majority_score(rc.task.metric, raw.train["label"], ds["label"])
                             for ds in raw.eval.values()) / len(raw.eval))
    torch.manual_seed(rc.seed)  # the task head's initialisation
    try:
        loaded = load_model(rc.model, rc.task.num_labels, device)
    except ModelUnavailable as e:
        write_unless_ok(result_path, replace(run, status="failed", reason=str(e)).to_json())
        raise
    model, head = loaded.model, loaded.head
    _check_model(rc, method, model)  # options that need the model's own config, before any tokenising
    if rc.model.arch == "decoder" and rc.task.prompt is None and rc.task.decoder_prompt:
        raw.task = replace(rc.task, prompt=rc.task.decoder_prompt)  # decoders read a prompt, paper §5.3
    run.prompt = raw.task.prompt
    data = tokenize(raw, loaded.tokenizer, rc.task.max_length, rc.train.pad_to_max_length)
    from transformers import DataCollatorWithPadding

    # on a GPU, lengths padded to a multiple of 8: few distinct shapes, tensor-core friendly
    collate = DataCollatorWithPadding(loaded.tokenizer, return_tensors="pt",
                                      pad_to_multiple_of=8 if device.type == "cuda" else None)
    selector = Selector(model, data.train, collate, head=head, scope=rc.fisher.scope,
                        include_head=rc.mask.include_head, k_rule=rc.mask.k_rule, mask_scope=rc.mask.scope,
                        fisher_kind=rc.fisher.kind, fisher_grad=rc.fisher.grad, engine=rc.fisher.engine,
                        batch_size=rc.fisher.batch_size, dropout=rc.fisher.dropout, progress=rc.train.progress,
                        precision=rc.fisher.precision)
    return Prepared(data, model, head, collate, selector, device)


def _plans(rc: RunConfig, method, prep: Prepared, out: Path) -> list[Plan]:
    """Every plan, selected before any fine-tuning; each mask with the head it was selected with (written
    with its cell, once that trained ok: `_train_cells`)."""
    ctx = Context(prep.selector, rc.sparsity, rc.ladder, rc.fisher.num_samples, rc.seed,
                  train_steps=planned_steps(len(prep.data.train), rc.train))
    if rc.mask.load:
        plans = _loaded_plan(rc.mask.load, prep.model, prep.selector.num_params,
                             dense=[] if rc.mask.include_head else prep.head)
    else:
        plans = method.plans(ctx)
    head_state = {n: p.detach().cpu().clone() for n, p in prep.model.named_parameters() if n in prep.head}
    for plan in plans:
        if plan.mask is not None:
            plan.mask.head = plan.mask.head or head_state
            plan.info["mask_sha256"] = plan.mask.sha256()
    return plans


def _train_cells(rc: RunConfig, method, prep: Prepared, plans: list[Plan], run: RunResult, out: Path, log,
                 before_cell, files: dict[str, Path]) -> list[CellResult]:
    """Train each pending cell from the same pretrained weights and head; a finished one is read back. The
    initial state is copied (to the CPU) only when a second cell will be trained from it; the selection's
    cached scores are dropped first (every plan exists). An ok cell's masks file, then its cell file, are
    written once it trained."""
    prep.selector.forget()
    mine = [p for p in plans if rc.cell is None or p.cell == rc.cell]
    complete = {p.cell for p in mine if rc.resume and done(out / "cells" / f"{p.cell}.json", run.config_hash, files)}
    pending = [p for p in mine if p.cell not in complete]
    initial = ({k: v.detach().to("cpu", copy=True) for k, v in prep.model.state_dict().items()}
               if len(pending) > 1 else None)
    cells, trained = [], False
    for plan in mine:
        cell_path = out / "cells" / f"{plan.cell}.json"
        if rc.resume and done(cell_path, run.config_hash, files):
            log(f"cell {plan.cell}: already complete")
            cells.append(read_cell(cell_path))
            continue
        if before_cell is not None:
            before_cell(plan.cell)
        if trained:
            merge(prep.model).load_state_dict(initial)  # drop the last cell's mask, then reset
        trained = True
        log(f"cell {plan.cell}: training ({_describe(plan)})")
        later = plan is not pending[-1]  # another cell will start from this model
        cell = _train_plan(rc, plan, prep, out, method.name, method.reports_trained_count, keep_model=later)
        if cell.status == "ok" and plan.mask is not None:
            cell = _written(cell, plan, out / "masks" / f"{plan.cell}.safetensors")
        (write_json if cell.status == "ok" else write_unless_ok)(cell_path, cell_json(run, cell))
        cells.append(cell)
        if cell.status == "failed":
            break
    return cells


def _check_model(rc: RunConfig, method, model) -> None:
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and rc.task.max_length > positions and rc.model.arch != "decoder":
        raise ConfigError(f"task.max_length={rc.task.max_length} is longer than model {rc.model.name}'s "
                          f"{positions} positions")
    if rc.fisher.scope is not None and method.draws_fisher_samples:
        import re

        if not any(re.search(rc.fisher.scope, n) for n, _ in model.named_parameters()):
            raise ConfigError(f"fisher.scope: {rc.fisher.scope!r} matches no parameter of the model")
    try:
        method.check_model(model)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _loaded_plan(path: str, model, num_params: int, dense: list[str]) -> list[Plan]:
    """`mask.load`: the saved mask as the one plan, its head loaded into the model (ValueError naming the
    file when it is not a mask, does not fit the model, or selects entries of ``dense``, the head trained
    whole unless ``mask.include_head``)."""
    from ..core.masks import Mask

    mask = Mask.load(path)
    mask.check_model(model, where=f"mask file {path}")
    if inside := [n for n in mask.indices if n in dense]:
        raise ValueError(f"mask file {path}: it selects entries of the task head ({inside[0]!r}), so it was made "
                         "with mask.include_head=true: train it with mask.include_head=true")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in mask.head.items():
            params[n].copy_(t)
    return [Plan(cell="main", mask=mask, ratio=100.0 * mask.count / num_params,
                 info={"mask_file": str(path), "head_from_mask_file": bool(mask.head)})]


def _check_sizes(rc: RunConfig, method, num_train: int) -> None:
    if not method.draws_fisher_samples or rc.mask.load:
        return
    if rc.sparsity.mode == "single" and rc.fisher.num_samples > num_train:
        raise ConfigError(f"fisher.num_samples={rc.fisher.num_samples} is larger than the training set "
                          f"({num_train} examples of {rc.task.name})")
    if rc.sparsity.mode != "single" and max(rc.ladder.samples) > num_train:
        raise ConfigError(f"ladder.samples={list(rc.ladder.samples)} asks for {max(rc.ladder.samples)} samples, "
                          f"the training set has {num_train} ({rc.task.name})")


def _describe(plan: Plan) -> str:
    bits = []
    if plan.ratio is not None:
        bits.append(f"ratio {plan.ratio:g}%")
    if plan.samples is not None:
        bits.append(f"{plan.samples} samples")
    if plan.mask is not None:
        bits.append(f"{plan.mask.count} entries")
    return ", ".join(bits) or "all parameters"


def _train_plan(rc, plan: Plan, prep: Prepared, out: Path, method_name: str, own_count: bool = False,
                keep_model: bool = False) -> CellResult:
    """Train one plan's cell. An adapter wrap (LoRA, bottlenecks) changes the model's modules in place, so
    with ``keep_model`` (a later cell starts from this model) it wraps a copy. A wrap that comes with a mask
    (Diff pruning) writes into the masked model itself and adds no module: it gets the model."""
    model, head, data, collate, device = prep.model, prep.head, prep.data, prep.collate, prep.device
    num_params = prep.selector.num_params
    head_count = sum(p.numel() for n, p in model.named_parameters() if n in head)
    if plan.mask is not None:
        apply_mask(model, plan.mask, trainable=[] if rc.mask.include_head else head,
                   weight_grad=rc.mask.weight_grad)
        if rc.mask.weight_grad != "dense":
            plan.info["weight_grad"] = weight_grad_summary(model)
    if plan.wrap is None:
        train_model = model
    else:
        train_model = plan.wrap(copy.deepcopy(model) if keep_model and plan.mask is None else model)
    trainable = trainable_count(train_model)
    if not rc.mask.include_head:
        trainable -= head_count
    if plan.mask is not None and trainable != plan.mask.count:
        raise RuntimeError(f"cell {plan.cell}: {trainable} trainable values, mask holds {plan.mask.count}")
    what = dict(cell=plan.cell, ratio=plan.ratio, samples=plan.samples, trainable_params=trainable,
                trainable_ratio=100.0 * trainable / num_params, mask_sha256=plan.info.get("mask_sha256"),
                info={k: v for k, v in plan.info.items() if k != "mask_sha256"})
    train_cfg = rc.train
    if method_name in rc.train.method_lr:  # this method's own (tuned) learning rate
        train_cfg = replace(rc.train, lr=float(rc.train.method_lr[method_name]))
    what["info"]["lr"] = train_cfg.lr or rc.task.lr
    try:
        tr = fit(train_model, data.train, data.eval, collate, rc.task, train_cfg, device, rc.seed, hook=plan.hook,
                 select=data.holdout)
    except NonFiniteLoss as e:
        return CellResult(**what, status="failed", reason=str(e), failed_step=e.step)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return CellResult(**what, status="failed", reason=f"out of memory on {device} with train.batch_size="
                          f"{rc.train.batch_size} (try a smaller train.batch_size or task.max_length)")
    if own_count:  # a hook that grows its own trainable set (ID³) says how many it trained
        what.update(trainable_params=plan.hook.trained_count,
                    trainable_ratio=100.0 * plan.hook.trained_count / num_params)
    delta_bytes = None
    if rc.save_delta and plan.mask is not None:
        path = out / "deltas" / f"{plan.cell}.safetensors"
        try:
            delta_bytes = save_delta(model, path, head=head)
        except (OSError, SafetensorError) as e:
            return CellResult(**what, status="failed", reason=_write_failure(path, e))
    return CellResult(**what, status="ok", score=tr.score, metrics=tr.metrics, dev_best=tr.dev_best,
                      holdout_score=tr.holdout_score, selected_on="dev" if data.holdout is None else "holdout",
                      best_epoch=tr.best_epoch,
                      steps=tr.steps, epochs_run=tr.epochs_run, stopped_early=tr.stopped_early, history=tr.history,
                      timings={"train_seconds": tr.train_seconds, "samples_per_second": tr.samples_per_second},
                      peak_memory=_peak_memory(device), delta_bytes=delta_bytes)


def _write_failure(where: Path, e: BaseException) -> str:
    return f"cannot write {where}: {getattr(e, 'strerror', None) or str(e).strip() or type(e).__name__}"


def _written(cell: CellResult, plan: Plan, path: Path) -> CellResult:
    """``cell`` once its plan's masks file is written to ``path``, or the cell failed with the one line why
    (a full disk)."""
    try:
        plan.mask.save(path, {"cell": plan.cell})
    except (OSError, SafetensorError) as e:
        return replace(cell, status="failed", reason=_write_failure(path, e))
    return cell


def _summarise(run: RunResult, cells: list[CellResult], plans: list[Plan], timings: dict, device) -> RunResult:
    """The run with its cells: ok when every trained cell is; the first failure's reason and step."""
    failed = [c for c in cells if c.status != "ok"]
    ok = [c for c in cells if c.status == "ok"]
    speed = sum(c.timings.get("samples_per_second", 0.0) for c in ok) / len(ok) if ok else 0.0
    return replace(run, cells=cells, single=len(plans) == 1 and plans[0].cell == "main",
                   status="failed" if failed or not ok else "ok",
                   reason=failed[0].reason if failed else None, failed_step=failed[0].failed_step if failed else None,
                   timings={**timings, "train_seconds": sum(c.timings.get("train_seconds", 0.0) for c in ok),
                            "samples_per_second": speed},
                   peak_memory=_peak_memory(device))
