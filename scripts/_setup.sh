# Shared set-up for scripts/demo and scripts/test (sourced, not run).
# Creates .venv when missing and installs paracell with the extras the
# calling script names (PARACELL_EXTRAS: "demo" runs notebooks, "test" adds
# the test tools); PARACELL_BROWSER=1 also installs Debian's Chromium, which
# only the browser tests need.  Re-running it is cheap: each step skips what
# is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CHROMIUM=/usr/bin/chromium
EXTRAS="${PARACELL_EXTRAS:-test}"

# The browser tests use the system's Chromium; Playwright never downloads one.
if [ "${PARACELL_BROWSER:-0}" = 1 ] && [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        AS_ROOT=()
    elif command -v sudo >/dev/null 2>&1; then
        AS_ROOT=(sudo -n)  # never waits for a password: CI runs unattended
    else
        echo "paracell: $CHROMIUM is missing; install Debian's chromium package (apt-get install chromium) as root" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "paracell: $CHROMIUM is missing and there is no apt-get; install Chromium at $CHROMIUM" >&2
        exit 1
    fi
    echo "paracell: installing Chromium for the browser tests (apt-get install chromium)" >&2
    # shellcheck source=scripts/_apt.sh
    source "$ROOT/scripts/_apt.sh"
    # through env: sudo does not pass the caller's environment on
    APT_PREFIX=("${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive)
    {
        apt_get update -qq &&
            apt_get install -y -qq --no-install-recommends chromium
    } >&2 || true
    if [ ! -x "$CHROMIUM" ]; then
        echo "paracell: could not install Debian's chromium package (apt-get install chromium); the browser tests need $CHROMIUM" >&2
        exit 1
    fi
fi

if [ ! -x "$PY" ]; then
    echo "paracell: creating $VENV" >&2
    python3 -m venv "$VENV"
fi

# Reinstall only when the project description changed since the last install.
STAMP="$VENV/.paracell-installed-$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || ! "$PY" -c "import paracell" 2>/dev/null; then
    echo "paracell: installing paracell[$EXTRAS] into $VENV" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$PY" -m pip install --quiet --disable-pip-version-check -e "$ROOT[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    if [ "$EXTRAS" = test ]; then
        CHECK="import paracell, jupyterlab, playwright"
    else
        CHECK="import paracell, nbclient"
    fi
    "$PY" -c "$CHECK" || { echo "paracell: installation failed" >&2; exit 1; }
    touch "$STAMP"
fi
