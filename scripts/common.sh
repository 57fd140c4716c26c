# Shared by scripts/demo.sh and scripts/test.sh: find Python >= 3.12 and make .venv.
# pygeoapi 0.24 needs Python 3.12 or newer.

find_python() {
    if command -v pyenv >/dev/null 2>&1; then
        for v in 3.12.1 3.12 3.13.0 3.13; do
            if PYENV_VERSION=$v pyenv exec python3 -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
                echo "env PYENV_VERSION=$v pyenv exec python3"
                return
            fi
        done
    fi
    for exe in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 python3.13 python3.12 python3; do
        if command -v "$exe" >/dev/null 2>&1 && "$exe" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
            echo "$exe"
            return
        fi
    done
    echo "geoharbor needs Python >= 3.12 (pygeoapi 0.24): install python3.12 or pyenv" >&2
    exit 1
}

make_venv() {
    local extras=$1
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
        rm -rf .venv
        # shellcheck disable=SC2046
        $(find_python) -m venv .venv
    fi
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[${extras}]"
}
