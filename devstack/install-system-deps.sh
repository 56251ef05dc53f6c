#!/usr/bin/env bash
# Installs the system packages the local stack needs, and only those missing:
# PostgreSQL (unless DATABASE_URL is set), redis-server (unless REDIS_URL is set),
# Chromium and its WebDriver (the pixel's browser test) and the venv module for the Python that builds .venv. Quiet when all is there.
# Arguments name further commands, for targets that need more than the stack
# (`make bench`: wrk), each pinned to a Debian package version.
set -euo pipefail

PYTHON="${PYTHON:-python3.11}"
missing=()

have_postgres() {
    [[ -n "${PODMESH_PG_BINDIR:-}" && -x "${PODMESH_PG_BINDIR}/initdb" ]] && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
    # Outside Debian's layout, pg_config names the server's bin directory.
    command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]
}

if [[ -z "${DATABASE_URL:-}" ]] && ! have_postgres; then
    missing+=(postgresql)
fi
if [[ -z "${REDIS_URL:-}" ]] && ! command -v redis-server >/dev/null \
    && [[ ! -x /usr/bin/redis-server ]]; then
    missing+=(redis-server)
fi
# The pixel snippet's browser test (tests/integration/test_attribution_sites_browser.py).
# Optional: without root they are not installed and that test skips.
optional=()
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    optional+=(chromium chromium-driver)
fi
# Debian splits ensurepip out of the interpreter; `python -m venv` fails without it.
if [[ ! -x .venv/bin/python ]] && command -v "$PYTHON" >/dev/null \
    && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=("$("$PYTHON" -c 'import sys; print(f"python3.{sys.version_info[1]}-venv")')")
fi
# Each further argument is COMMAND=DEBIAN_VERSION: the command comes from the Debian
# package of the same name at exactly that version, so a benchmark's tool is locked too.
for pinned in "$@"; do
    command=${pinned%%=*}
    version=${pinned#*=}
    if ! command -v "$command" >/dev/null; then
        missing+=("$command=$version")
        continue
    fi
    installed=$(dpkg-query -W -f='${Version}' "$command" 2>/dev/null || true)
    if [[ "$installed" != "$version" ]]; then
        echo "$command ${installed:-(not from a Debian package)} is installed, but the" \
            "Makefile locks version $version: install that one (apt-get install $command=$version)" >&2
        exit 1
    fi
done

if [[ ${#optional[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        missing+=("${optional[@]}")
    elif [[ ${#missing[@]} -eq 0 ]]; then
        echo "not installed (not root): ${optional[*]}; the pixel's browser test will skip" >&2
    fi
fi
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "missing system packages: ${missing[*]}" >&2
    echo "install them (e.g. sudo apt-get install -y ${missing[*]}), run make as root," >&2
    echo "or point DATABASE_URL / REDIS_URL at running servers" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "missing system packages: ${missing[*]}; no apt-get here: install them yourself" >&2
    exit 1
fi

echo "installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# Debian's packages start system-wide servers on 5432 and 6379 on install. We never
# use those (our ports are 55432 and 56379), so keep them from starting at all,
# unless the machine already has its own policy.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed ${missing[*]}" >&2
