#!/usr/bin/env bash
# Builds the wheel and proves it works outside the checkout: for Python 3.11 and 3.12, a fresh venv
# in a temporary folder, `pip install` of the wheel (the base package only: no torch), then from
# that folder `guard migrate`, `guard check`, `guard serve` + one POST /v1/guard and the admin
# sign-in page. Any failure, or a step past its time limit, fails the script with the step's output.
#
#   scripts/wheel-smoke.sh [PYTHON_FOR_BUILD]     (default: .venv/bin/python)
#   WHEEL_SMOKE_PYTHONS="python3.11 python3.12"   interpreters to try (names on PATH or paths)
set -euo pipefail
cd "$(dirname "$0")/.."
build_python=${1:-.venv/bin/python}
step_timeout=${WHEEL_SMOKE_STEP_TIMEOUT:-300}
ready_s=${WHEEL_SMOKE_READY_S:-240}  # a loaded 2-core machine needs more than a minute to load the scorer and OCR
install_timeout=${WHEEL_SMOKE_INSTALL_TIMEOUT:-900}

work=$(mktemp -d "${TMPDIR:-/tmp}/guard-wheel.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "wheel-smoke: FAILED: $*" >&2; exit 1; }

# An interpreter per minor version: the name on PATH, else pyenv's build of it.
find_python() {
  local minor=$1 candidate
  for candidate in "python$minor" "$(command -v pyenv >/dev/null && pyenv root)/versions/$minor"*/bin/python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys, venv' 2>/dev/null \
      && [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$minor" ]; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}
pythons=()
if [ -n "${WHEEL_SMOKE_PYTHONS:-}" ]; then
  read -r -a pythons <<<"$WHEEL_SMOKE_PYTHONS"
else
  for minor in 3.11 3.12; do
    found=$(find_python "$minor") || fail "no Python $minor found (on PATH as python$minor, or under pyenv)"
    pythons+=("$found")
  done
fi

start=$SECONDS
rm -rf build  # setuptools would carry files deleted since the last build over from build/lib
timeout "$step_timeout" "$build_python" -m pip wheel --quiet --no-deps -w "$work/dist" . >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; fail "pip wheel"; }
wheel=$(ls "$work"/dist/reply_guard-*.whl)
"$build_python" - "$wheel" <<'PY' || fail "the wheel does not carry every file of templates/, migrations/ and the package data"
import sys, zipfile
from pathlib import Path
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
files = [p for top in ("templates", "migrations") for p in Path(top).rglob("*") if p.is_file()]
wanted = [f"guard/{p.as_posix()}" for p in files if "__pycache__" not in p.parts]
wanted += [p.as_posix() for d in ("guard/admin/static", "guard/scoring/calibration") for p in Path(d).iterdir()]
wanted += [p.as_posix() for p in Path("guard/issues").glob("*.json")]  # the fitted issue model
missing = [n for n in wanted if n not in names]
if missing:
    sys.exit("missing from the wheel: " + ", ".join(sorted(missing)))
PY
echo "wheel-smoke: built $(basename "$wheel") in $((SECONDS - start)) s"

# Runs a step with a time limit in the clean folder, without anything from the checkout on the path.
run() {
  local name=$1; shift
  if ! (cd "$site" && env -u PYTHONPATH -u VIRTUAL_ENV timeout "$step_timeout" "$@") >"$site/$name.log" 2>&1; then
    cat "$site/$name.log" >&2; fail "$label: $name"
  fi
}

for python in "${pythons[@]}"; do
  t0=$SECONDS
  label=$("$python" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')
  site="$work/$label"
  mkdir -p "$site"
  "$python" -m venv "$site/venv"
  bin="$site/venv/bin"
  timeout "$install_timeout" "$bin/python" -m pip install --quiet --no-compile -c constraints.txt "$wheel" \
    >"$site/install.log" 2>&1 || { cat "$site/install.log" >&2; fail "$label: pip install of the wheel"; }
  t_install=$((SECONDS - t0))
  "$bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is not None)' \
    || fail "$label: the base package pulled in torch"

  export GUARD_DATABASE_URL="sqlite:///$site/guard.db" GUARD_SPOOL_DIR="$site/spool"
  run resources "$bin/python" -c '
import sys
from pathlib import Path
from guard import resources
venv = Path(sys.prefix).resolve()
for folder in (resources.followup_templates(), resources.admin_templates(), resources.admin_static(),
               resources.migrations()):
    assert venv in folder.resolve().parents, f"{folder} is not inside {venv}"
'
  run migrate "$bin/guard" migrate
  run check "$bin/guard" check --question "The button on my jeans popped off the first time I wore them." \
    --reply "Sign up for our newsletter and get 10% off your next order!"
  grep -q '"action": "escalate"' "$site/check.log" || { cat "$site/check.log" >&2; fail "$label: guard check's decision"; }

  port=$("$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  (cd "$site" && exec env -u PYTHONPATH "$bin/guard" serve --host 127.0.0.1 --port "$port") >"$site/serve.log" 2>&1 &
  server_pid=$!
  (cd "$site" && env -u PYTHONPATH -u VIRTUAL_ENV timeout "$step_timeout" "$bin/python" - "$port" "$ready_s") \
    >"$site/http.log" 2>&1 <<'PY' || { cat "$site/http.log" >&2; tail -n 40 "$site/serve.log" >&2; fail "$label: http"; }
import json, sys, time, urllib.error, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
ready_s = float(sys.argv[2])
deadline = time.monotonic() + ready_s
while True:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
            if r.status == 200:
                break
    except (OSError, urllib.error.URLError):
        pass
    if time.monotonic() > deadline:
        sys.exit(f"the guard did not become ready in {ready_s:.0f} s")
    time.sleep(0.25)
body = json.dumps({
    "conversation_id": "wheel-smoke",
    "question": "新买的牛仔裤，右边口袋开线了，才穿了一次",
    "reply": "亲，很抱歉给您带来不便，您可以在订单页面申请售后，我们会尽快处理的。",
    "locale": "zh",
}).encode()
req = urllib.request.Request(base + "/v1/guard", data=body, headers={"content-type": "application/json"})
with urllib.request.urlopen(req, timeout=30) as r:
    decision = json.load(r)
assert decision["action"] in {"send", "follow_up", "review", "escalate"}, decision
assert 0.0 <= decision["score"] <= 1.0, decision
assert decision["decision_id"], decision
with urllib.request.urlopen(base + "/admin/login", timeout=10) as r:
    page = r.read().decode()
    assert r.status == 200 and "<form" in page and 'name="password"' in page, page[:500]
print("POST /v1/guard:", decision["action"], decision["score"], "| GET /admin/login: 200")
PY
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
  echo "wheel-smoke: $label ok (install $t_install s, total $((SECONDS - t0)) s): $(tail -n 1 "$site/http.log")"
done
echo "wheel-smoke: passed in $((SECONDS - start)) s"
