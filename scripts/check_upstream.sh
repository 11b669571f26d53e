#!/usr/bin/env bash
# Check a patch against the REAL upstream package from the package registry, on CPU, in minutes.
#   bash scripts/check_upstream.sh llamafactory        # llamafactory 0.9.5 + patches/llama_factory
#   bash scripts/check_upstream.sh llava               # llava-torch 1.2.2.post1 + patches/llava
#   bash scripts/check_upstream.sh --venv DIR llava    # venv folder (default .venv-upstream-<name>; reused)
#   bash scripts/check_upstream.sh --work DIR llava    # keep model, data, logs and report.json in DIR
#   bash scripts/check_upstream.sh llava -- --no-grouping   # control: without the sampler (a) must FAIL
#   PYTHON=python3.11 bash scripts/check_upstream.sh ...    # the venv's python: 3.11 suits both packages
#
# Why: tests/patches runs the patches against stand-ins with upstream's names; only the real packages
# show that upstream's own training path ends up with (a) single-modality optimizer steps, judged
# from the rows of every micro-batch its trainer received, and (b) per-role learning rates in the
# optimizer's param groups and the logs. It makes a venv with the upstream package at the version
# the patch READMEs document (first run: GBs of wheels, torch with its CUDA libraries; they work on
# CPU), installs the plugin the documented way (pip install --no-deps -e), applies the patch as
# documented (the patch file on sys.path, apply(), then upstream's run_exp()/train()), trains a tiny
# random model for 12 steps (past the end of the first epoch, where upstream LLaVA mixes) with the
# driver in scripts/check_upstream/, and prints a PASS/FAIL summary with the versions.
# Exit status: 0 PASS, 1 FAIL, 2 usage or install error. Not part of .ci/run.
# Python: llamafactory 0.9.5 requires >= 3.11; torch 2.0.1 (llava-torch's pin) has wheels up to 3.11.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

venv="" work="" name=""
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="${2:?--venv needs a folder}"; shift 2 ;;
    --work) work="${2:?--work needs a folder}"; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) [ -z "$name" ] || usage; name="$1"; shift ;;
  esac
done
extra=("$@")  # after --: passed to the driver

# The versions each patch README documents (patches/*/README.md, "Install").
case "$name" in
  llamafactory)
    dist=llamafactory version=0.9.5 driver=llamafactory_check.py
    # LLaMA-Factory 0.9.5 with the torch trio it is used with; its resolver picks transformers 5.6.0.
    spec=("llamafactory==$version" "torch==2.11.0" "torchvision==0.26.0" "torchaudio==2.11.0") ;;
  llava)
    dist=llava-torch version=1.2.2.post1 driver=llava_check.py
    # Its own pins: torch 2.0.1, transformers 4.36.2. numpy<2: torch 2.0.1 was built against NumPy 1.x.
    spec=("llava-torch==$version" "numpy<2") ;;
  *) usage ;;
esac

venv="${venv:-$repo/.venv-upstream-$name}"
started=$(date +%s)
pip_log="$venv/check_upstream-pip.log"
pip_install() {  # quiet; the log is shown when pip fails
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check "$@" >"$pip_log" 2>&1; then
    echo "check_upstream: pip install $* failed; the end of $pip_log:" >&2
    grep -v 'is ignored: it is neither a file nor a directory' "$pip_log" | tail -20 >&2
    exit 2
  fi
}

if [ ! -x "$venv/bin/python" ]; then
  echo "[check_upstream] creating $venv with ${PYTHON:-python3}"
  "${PYTHON:-python3}" -m venv "$venv" || exit 2
fi
installed=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$dist'))" 2>/dev/null || true)
if [ "$installed" != "$version" ]; then
  echo "[check_upstream] installing ${spec[*]} (first run downloads GBs)"
  pip_install "${spec[@]}"
else
  echo "[check_upstream] reusing $venv ($dist $installed)"
fi
pip_install --no-deps -e "$repo"  # the documented way: upstream keeps its own transformers

keep=1
if [ -z "$work" ]; then
  work="$(mktemp -d "${TMPDIR:-/tmp}/check_upstream-$name.XXXXXX")"
  keep=0
fi
mkdir -p "$work"
log="$work/train.log"
echo "[check_upstream] training with the patch applied (log: $log)"
status=0
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" CUDA_VISIBLE_DEVICES="" \
  "$venv/bin/python" "$repo/scripts/check_upstream/$driver" \
  --repo "$repo" --work "$work" --report "$work/report.json" "${extra[@]}" >"$log" 2>&1 || status=$?

if grep -q '^==== check_upstream' "$log"; then
  sed -n '/^==== check_upstream/,$p' "$log"
else
  echo "==== check_upstream $name: FAIL (the driver stopped before its checks; the end of $log) ===="
  tail -25 "$log"
  status=1
fi
echo "[check_upstream] $name: $([ "$status" = 0 ] && echo PASS || echo FAIL), $(date -u '+%Y-%m-%d %H:%M UTC'), $(($(date +%s) - started)) s in all"
if [ "$status" = 0 ] && [ "$keep" = 0 ]; then
  rm -rf "$work"
else
  echo "[check_upstream] model, data, train.log and report.json kept in $work"
fi
exit "$status"
