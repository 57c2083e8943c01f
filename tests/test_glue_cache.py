"""The hub path for GLUE data, tested offline: with no TSV files, `load_task` calls `load_dataset("nyu-mll/glue",
"rte")` as it does for a user with a network, and the Hugging Face datasets cache that a real download leaves
answers it (`HF_HOME/datasets/nyu-mll___glue/rte/0.0.0/<commit>/glue-<split>.arrow` + `dataset_info.json`).

The cache is written by datasets itself: the parquet builder, configured as `load_dataset` configures it for the
hub repo's `rte` config (repo id, dataset name, commit hash), reads the repo's parquet files from a fake hub
snapshot; only the download (an `hf://` URL becoming a hub cache file) is replaced, as it needs the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from fishtune.config import DataConfig, TaskConfig
from fishtune.data.glue import HUB_ID, load_task

RTE = TaskConfig(name="rte", glue_dir="RTE", text_fields=["sentence1", "sentence2"])
COMMIT = "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"
LOAD = """
import json, sys
from fishtune.data.glue import DataUnavailable, load_task
from fishtune.config import DataConfig, TaskConfig
task = TaskConfig(name="rte", glue_dir="RTE", text_fields=["sentence1", "sentence2"])
out = {}
for source in ("auto", "hub"):
    try:
        d = load_task(task, DataConfig(dir=sys.argv[1], source=source))
        out[source] = {"source": d.source, "train": d.train.to_dict(), "validation": d.eval["validation"].to_dict()}
    except DataUnavailable as e:
        out[source] = str(e)
print(json.dumps(out))
"""


def hub_rows() -> dict[str, dict[str, list]]:
    """A few vendored RTE examples per split, as the hub's parquet files hold them (with `idx`; test: label -1)."""
    local = load_task(RTE, DataConfig(source="local"))
    rows = {"train": local.train[:8], "validation": local.eval["validation"][:4],
            "test": {**local.eval["validation"][4:6], "label": [-1, -1]}}
    return {s: {**r, "idx": list(range(len(r["label"])))} for s, r in rows.items()}


def fake_glue_download(home: Path, rows: dict[str, dict[str, list]]) -> None:
    """Leave in ``home`` what `load_dataset("nyu-mll/glue", "rte")` leaves: the repo's parquet files in the hub
    cache (refs/main -> snapshot) and the prepared arrow splits in the datasets cache."""
    from datasets import ClassLabel, Dataset, DownloadManager, Features, Value
    from datasets.data_files import DataFilesDict, DataFilesList
    from datasets.load import configure_builder_class
    from datasets.packaged_modules.parquet.parquet import Parquet, ParquetConfig

    features = Features({"sentence1": Value("string"), "sentence2": Value("string"),
                         "label": ClassLabel(names=["entailment", "not_entailment"]), "idx": Value("int32")})
    repo = home / "hub" / f"datasets--{HUB_ID.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot, base = repo / "snapshots" / COMMIT, f"hf://datasets/{HUB_ID}@{COMMIT}"
    for split, r in rows.items():
        Dataset.from_dict(r, features=features).to_parquet(snapshot / f"rte/{split}-00000-of-00001.parquet")
    config = ParquetConfig(name="rte", data_files=DataFilesDict(
        {s: DataFilesList([f"{base}/rte/{s}-00000-of-00001.parquet"], [None]) for s in rows}))
    builder = configure_builder_class(Parquet, [config], None, dataset_name="glue")(
        cache_dir=str(home / "datasets"), config_name="rte", hash=COMMIT, base_path=base, repo_id=HUB_ID,
        dataset_name="glue")

    class FromSnapshot(DownloadManager):  # hf://datasets/<repo>@<commit>/<path> -> the hub cache's copy
        def download(self, urls):
            return {s: [str(snapshot / u.split(f"@{COMMIT}/")[1]) for u in us] for s, us in urls.items()}

    builder.download_and_prepare(dl_manager=FromSnapshot(dataset_name="glue", base_path=base))
    assert Path(builder.cache_dir) == home / "datasets" / "nyu-mll___glue" / "rte" / "0.0.0" / COMMIT


def load_offline(home: Path, data_dir: Path) -> dict:
    """fishtune's load_task (source auto and hub) in a fresh process with ``home`` as HF_HOME, offline."""
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for var in ("HF_DATASETS_CACHE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, "-c", LOAD, str(data_dir)], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_rte_loads_from_the_datasets_cache_offline(tmp_path):
    rows = hub_rows()
    assert set(rows["train"]["label"]) == {0, 1}
    fake_glue_download(tmp_path / "hf", rows)
    (tmp_path / "glue").mkdir()  # data.dir: an empty folder, no RTE/train.tsv or dev.tsv
    got = load_offline(tmp_path / "hf", tmp_path / "glue")
    for source in ("auto", "hub"):
        assert isinstance(got[source], dict), got[source]  # else: DataUnavailable's message
        assert got[source]["source"] == f"hub:{HUB_ID}"
        assert got[source]["train"] == rows["train"]  # texts, label ids (not_entailment = 1) and idx
        assert got[source]["validation"] == rows["validation"]


def test_rte_without_files_or_cache_is_unavailable(tmp_path):
    (tmp_path / "glue").mkdir()
    got = load_offline(tmp_path / "empty", tmp_path / "glue")
    for source in ("auto", "hub"):
        folder = tmp_path / "glue" / "RTE"
        assert got[source].startswith(f"task rte: data not found in {folder} and the hub ({HUB_ID}) failed: ")
        assert "\n" not in got[source] and HUB_ID in got[source].split("failed: ")[1]
