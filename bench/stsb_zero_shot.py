"""Reference point for docs/report/dense_full: all-MiniLM-L6-v2 zero-shot on the STS-B dev set as the bi-encoder
it was trained as (each sentence encoded alone, mean pooling or the BERT pooler, cosine similarity), no
fine-tuning. The fine-tuned runs feed both sentences through the model together (a cross-encoder head on the
pooler), the setup of the paper and of every run in docs/report.

    python bench/stsb_zero_shot.py        # about a minute on one CPU thread
"""

from __future__ import annotations

import common
import torch
from scipy.stats import pearsonr, spearmanr
from transformers import AutoModel, AutoTokenizer

from fishtune.config import DataConfig, TaskConfig
from fishtune.data.glue import load_task

STSB = TaskConfig(name="stsb", glue_dir="STS-B", text_fields=["sentence1", "sentence2"], num_labels=1)


def embed(model, tok, texts: list[str], pool: str) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = tok(texts[i:i + 64], padding=True, truncation=True, return_tensors="pt")
            o = model(**batch)
            if pool == "mean":
                m = batch["attention_mask"].unsqueeze(-1).float()
                out.append((o.last_hidden_state * m).sum(1) / m.sum(1))
            else:
                out.append(o.pooler_output)
    return torch.cat(out)


def main() -> None:
    dev = load_task(STSB, DataConfig(source="local")).eval["validation"]  # data/glue, the whole dev set
    where = common.minilm_dir()
    tok, model = AutoTokenizer.from_pretrained(where), AutoModel.from_pretrained(where).eval()
    for pool in ("mean", "pooler"):
        a, b = (embed(model, tok, dev[field], pool) for field in STSB.text_fields)
        cos = torch.nn.functional.cosine_similarity(a, b).numpy()
        print(f"STS-B dev ({len(dev)} pairs), {pool} pooling, cosine: spearman {spearmanr(cos, dev['label'])[0]:.3f} "
              f"pearson {pearsonr(cos, dev['label'])[0]:.3f}")


if __name__ == "__main__":
    main()
