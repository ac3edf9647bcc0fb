#!/usr/bin/env bash
# Installs fetchd's build, test and benchmark dependencies from Debian
# (bookworm) packages with apt. Nothing else is downloaded, unless --undici
# asks for it.
#
#   deploy/install-deps.sh               everything: build, tests, benchmarks
#   deploy/install-deps.sh --build-only  just what building fetchd needs
#   deploy/install-deps.sh --undici      everything, and undici for the
#                                        benchmarks from the npm registry
#
# When every package is already installed it does nothing at all (no
# apt-get update), so it is cheap to run before every build. Run it as root,
# or as a user who may use sudo.
set -euo pipefail

# What building needs: the compiler, CMake, the libraries fetchd links (the
# content decoders' zlib, brotli and zstd, and hiredis for the Redis queue,
# among them), the llhttp C sources Debian ships in node-llhttp, python3,
# which CMake's test setup looks for at configure time, and ca-certificates,
# the CA bundle the built daemon verifies https servers against by default.
build_pkgs=(
    build-essential cmake pkg-config
    libuv1-dev libmbedtls-dev libjansson-dev node-llhttp
    zlib1g-dev libbrotli-dev libzstd-dev libhiredis-dev
    python3 ca-certificates
)

# What the tests and benchmarks add: servers and clients to test against
# (nginx, real proxies, redis; nss_wrapper gives danted a user of the
# test's own), the brotli and zstd tools that make the
# decoding tests' bodies, certificate tooling, promtool, valgrind, clang
# with its sanitizer runtimes and libFuzzer, llvm (its llvm-symbolizer names
# the lines in sanitizer reports), clang-format and git for the style check,
# systemd for systemd-analyze, systemd-socket-activate and systemd.pc,
# man-db and groff for the manual page checks, plotting, strace (bench.py
# --syscalls), and chromium
# (headless), which loads the operator's page in test_page.
test_pkgs=(
    nginx-light curl wrk prometheus nodejs npm openssl chromium
    tinyproxy dante-server libnss-wrapper redis-server brotli zstd
    valgrind clang clang-format libclang-rt-14-dev llvm git
    systemd man-db groff-base
    socat jq gnuplot-nox procps strace
)

# The services that installing these packages would start and enable. The
# tests start private instances on loopback ports; a system-wide nginx on
# port 80 or a Prometheus on port 9090 on every interface is not wanted.
# While apt runs, a policy-rc.d that answers 101 (Debian's "action
# forbidden") keeps them from starting, and each one this run installed is
# disabled afterwards (a service that was installed before is left alone).
service_of() {
    case "$1" in
        nginx-light) echo nginx ;;
        prometheus) echo prometheus ;;
        redis-server) echo redis-server ;;
        tinyproxy) echo tinyproxy ;;
        dante-server) echo danted ;;
    esac
}

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "$0"
}

# undici, the Node.js client that tests/bench/bench.py measures fetchd
# against, is not a Debian package. With --undici the version pinned in
# tests/bench/package.json comes from the npm registry into
# tests/bench/node_modules (git-ignored); nothing is fetched when it is
# there already.
undici=no
install_undici() {
    local bench
    bench="$(cd "$(dirname "$0")/.." && pwd)/tests/bench"
    if (cd "$bench" && npm ls undici >/dev/null 2>&1); then
        echo "install-deps.sh: undici is already installed in $bench/node_modules"
        return 0
    fi
    echo "install-deps.sh: installing undici into $bench/node_modules (npm registry)"
    (cd "$bench" && npm install --no-audit --no-fund)
}

want=("${build_pkgs[@]}")
case "${1:-}" in
    "") want+=("${test_pkgs[@]}") ;;
    --build-only) ;;
    --undici)
        want+=("${test_pkgs[@]}")
        undici=yes
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        echo "install-deps.sh: unknown option '$1' (try --help)" >&2
        exit 2
        ;;
esac
if [ $# -gt 1 ]; then
    echo "install-deps.sh: too many arguments (try --help)" >&2
    exit 2
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install-deps.sh: dpkg-query not found; this script needs Debian (bookworm)" >&2
    exit 1
fi

# Names that installed packages provide. A package counts as present when an
# installed package provides it: NodeSource's nodejs, for one, provides (and
# conflicts with) npm, and asking apt for Debian's npm there would fail.
provided=" $(dpkg-query -W -f='${db:Status-Abbrev}|${Provides}\n' 2>/dev/null |
    sed -n 's/^ii *|//p' | tr ',' '\n' | sed 's/(.*)//; s/:any//; s/[[:space:]]//g' |
    tr '\n' ' ') "

is_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || status=""
    [ "$status" = "install ok installed" ] || [[ "$provided" == *" $1 "* ]]
}

missing=()
for pkg in "${want[@]}"; do
    if ! is_installed "$pkg"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps.sh: all ${#want[@]} packages are already installed"
    if [ "$undici" = yes ]; then
        install_undici
    fi
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "install-deps.sh: missing packages: ${missing[*]}" >&2
    echo "install-deps.sh: run this script as root, or install sudo" >&2
    exit 1
fi

# policy-rc.d: only when there is none; an administrator's own stays, and
# ours goes on every exit path.
policy=/usr/sbin/policy-rc.d
own_policy=no
remove_policy() {
    if [ "$own_policy" = yes ]; then
        "${as_root[@]}" rm -f "$policy"
        own_policy=no
    fi
}
trap remove_policy EXIT
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# deploy/install-deps.sh: no service starts while it installs\nexit 101\n' |
        "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod 755 "$policy"
    own_policy=yes
fi

echo "install-deps.sh: installing: ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
remove_policy

# Disable (and stop, where systemd runs) the services this run installed.
for pkg in "${missing[@]}"; do
    svc=$(service_of "$pkg")
    [ -n "$svc" ] || continue
    if command -v systemctl >/dev/null 2>&1; then
        now=()
        if [ -d /run/systemd/system ]; then
            now=(--now)
        fi
        if "${as_root[@]}" systemctl disable "${now[@]}" --quiet "$svc.service" 2>/dev/null; then
            echo "install-deps.sh: $svc is installed but stopped and disabled"
            continue
        fi
    fi
    # Without systemctl nothing started it (policy-rc.d): only the
    # System V links remain to be disabled.
    if command -v update-rc.d >/dev/null 2>&1 && [ -e "/etc/init.d/$svc" ]; then
        "${as_root[@]}" update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
    echo "install-deps.sh: $svc is installed but stopped and disabled"
done

still_missing=()
for pkg in "${missing[@]}"; do
    if ! is_installed "$pkg"; then
        still_missing+=("$pkg")
    fi
done
if [ ${#still_missing[@]} -ne 0 ]; then
    echo "install-deps.sh: still not installed: ${still_missing[*]}" >&2
    exit 1
fi
if [ "$undici" = yes ]; then
    install_undici
fi
echo "install-deps.sh: done"
