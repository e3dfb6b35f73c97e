#!/usr/bin/env bash
# Executes the notebooks headless, in place (their outputs are committed):
#   tools/run_notebooks.sh [--quick] [NOTEBOOK...]
# 1. cargo build --release (the notebooks drive target/release/s4 through S4_BIN);
# 2. .venv-notebooks/ (python3 -m venv) with the pinned notebooks/requirements.txt, reinstalled only
#    when that file changes, and the Python package s4rs built from ./python (every run);
# 3. jupyter nbconvert --to notebook --execute --inplace on every notebooks/[0-9]*.ipynb (or the
#    NOTEBOOKs given), printing the wall time of each. Exits non-zero if the build, the environment or
#    any notebook fails (a failing notebook is left as it was; the others still run).
#    Streams are coalesced and no timing metadata is recorded: a re-run with the same versions
#    rewrites the same bytes.
# --quick exports S4_QUICK=1: the notebooks use smaller sizes (a smoke test, not for committing), and
# are executed into a scratch folder: the committed notebooks stay untouched.
# Env: PYTHON (default python3, must be 3.11 for the pins), S4_NOTEBOOK_TIMEOUT (seconds per cell, 600).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
quick=0
notebooks=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "run_notebooks: unknown option $arg" >&2; usage >&2; exit 2 ;;
        *) notebooks+=("$arg") ;;
    esac
done
if [ ${#notebooks[@]} -eq 0 ]; then
    shopt -s nullglob
    notebooks=(notebooks/[0-9]*.ipynb)
    shopt -u nullglob
fi
if [ ${#notebooks[@]} -eq 0 ]; then
    echo "run_notebooks: no notebooks/[0-9]*.ipynb found" >&2
    exit 1
fi
for nb in "${notebooks[@]}"; do
    [ -f "$nb" ] || { echo "run_notebooks: no such notebook: $nb" >&2; exit 2; }
done

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
t_all=$(now)

echo "== cargo build --release"
t0=$(now)
cargo build --release
echo "   build: $(elapsed "$t0") s"
export S4_BIN="$ROOT/target/release/s4"

VENV="$ROOT/.venv-notebooks"
REQ="$ROOT/notebooks/requirements.txt"
PY=${PYTHON:-python3}
req_sum=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/jupyter" ] || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$req_sum" ]; then
    echo "== creating $VENV from notebooks/requirements.txt ($("$PY" --version 2>&1))"
    t0=$(now)
    rm -rf "$VENV"
    if ! "$PY" -m venv "$VENV"; then
        echo "run_notebooks: '$PY -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
        exit 1
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQ"
    echo "$req_sum" > "$VENV/.requirements.sha256"
    echo "   environment: $(elapsed "$t0") s"
else
    echo "== $VENV is up to date with notebooks/requirements.txt"
fi

# The Python package (notebook 05 uses it), rebuilt from this checkout on every run
echo "== installing the Python package s4rs (./python) into $VENV"
t0=$(now)
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps --force-reinstall ./python
echo "   s4rs: $(elapsed "$t0") s"

# Keep Jupyter/IPython away from any user-level kernels, config and startup files: the kernel
# "python3" is then the venv's own Python.
export JUPYTER_DATA_DIR="$VENV/share/jupyter"
export JUPYTER_CONFIG_DIR="$VENV/etc/jupyter-config"
export IPYTHONDIR="$VENV/etc/ipython"
export JUPYTER_PLATFORM_DIRS=1
export MPLCONFIGDIR="$VENV/etc/matplotlib"
mkdir -p "$JUPYTER_CONFIG_DIR" "$IPYTHONDIR" "$MPLCONFIGDIR"
# The machine has 2 shared cores: a multi-threaded BLAS only spins (each notebook sets this too).
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYDEVD_DISABLE_FILE_VALIDATION=1
# The kernel talks to nbconvert over Unix sockets (--KernelManager.transport=ipc), not over
# localhost TCP (which ipykernel warns about, unencrypted). The sockets live in a short scratch
# folder given as an absolute prefix (the kernel runs in the notebook's folder, and a socket path
# must stay under 108 bytes), removed on exit.
sockets=$(mktemp -d "/tmp/s4nb.XXXXXX")
trap 'rm -rf "$sockets"' EXIT
if [ "$quick" = 1 ]; then export S4_QUICK=1; else unset S4_QUICK; fi

timeout_s=${S4_NOTEBOOK_TIMEOUT:-600}
# A full run refreshes the committed notebooks in place; a --quick run (CI) executes them into a
# scratch folder and leaves the committed ones untouched.
if [ "$quick" = 1 ]; then
    out_dir=$(mktemp -d "${TMPDIR:-/tmp}/s4-notebooks.XXXXXX")
    where=(--output-dir "$out_dir")
else
    where=(--inplace)
fi
failed=()
summary=()
for nb in "${notebooks[@]}"; do
    echo "== executing $nb$([ "$quick" = 1 ] && echo ' (S4_QUICK=1)')"
    t0=$(now)
    if "$VENV/bin/jupyter" nbconvert --to notebook --execute "${where[@]}" \
        --ExecutePreprocessor.timeout="$timeout_s" \
        --ExecutePreprocessor.kernel_name=python3 \
        --KernelManager.transport=ipc --KernelManager.ip="$sockets/kernel" \
        --ExecutePreprocessor.record_timing=False \
        --NotebookExporter.preprocessors='["nbconvert.preprocessors.CoalesceStreamsPreprocessor"]' \
        "$nb"; then
        status=ok
    else
        status=FAILED
        failed+=("$nb")
    fi
    dt=$(elapsed "$t0")
    echo "   $nb: $status in $dt s"
    summary+=("$(printf '%-40s %-7s %8s s' "$nb" "$status" "$dt")")
done

echo "== wall time per notebook"
printf '   %s\n' "${summary[@]}"
echo "   total (with build and environment): $(elapsed "$t_all") s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "run_notebooks: ${#failed[@]} notebook(s) failed: ${failed[*]}" >&2
    exit 1
fi
echo "run_notebooks: all ${#notebooks[@]} notebook(s) ran without errors"
