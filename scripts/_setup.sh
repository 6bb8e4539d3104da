# Shared set-up for scripts/demo and scripts/test (sourced, not run).
# Creates .venv when missing and installs paracell with what the tests need;
# re-running it is cheap: pip skips what is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    echo "paracell: creating $VENV" >&2
    python3 -m venv "$VENV"
fi

# Reinstall only when the project description changed since the last install.
STAMP="$VENV/.paracell-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || ! "$PY" -c "import paracell" 2>/dev/null; then
    echo "paracell: installing paracell and its test tools into $VENV" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$PY" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$PY" -c "import paracell" || { echo "paracell: installation failed" >&2; exit 1; }
    touch "$STAMP"
fi
