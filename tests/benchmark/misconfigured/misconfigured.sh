#!/usr/bin/env bash
# Usage: misconfigured.sh CODE_TREE OUT_DIR [SECONDS]
# Five servers that cannot be watched (foreign CA, wrong pin, wrong password, closed port,
# an HTML page): runs `sklm-watcher run` for SECONDS (60), then `status` and `events`.
# CODE_TREE is a checkout whose watcher/ is used (PYTHONPATH), e.g. a git worktree of an
# older commit for a before/after. Outputs land in OUT_DIR.
set -u
here=$(cd "$(dirname "$0")" && pwd)
tree=$(cd "$1" && pwd); secs=${3:-60}
rm -rf "$2"; mkdir -p "$2"; out=$(cd "$2" && pwd); cd "$out"
export PYTHONPATH=$tree
PY=${PY:-$(git -C "$here" rev-parse --show-toplevel)/.venv/bin/python}
$PY -m watcher simulate "$here/scenario.toml" --tls --ca-out "$out/ca.pem" --write-config "$out/sim.toml" --state-dir "$out/state" > "$out/sim.out" 2>&1 &
sim=$!
for i in $(seq 100); do grep -q ready "$out/sim.out" 2>/dev/null && break; sleep 0.1; done
$PY - "$out" <<'PY'
import sys, pathlib, re, trustme
out = pathlib.Path(sys.argv[1])
text = (out / "sim.toml").read_text()
other = trustme.CA(); other.cert_pem.write_to_path(str(out / "other-ca.pem"))
# per-server edits
blocks = re.split(r"(?m)^(?=\[\[servers\]\])", text)
res = []
for b in blocks:
    if 'name = "bad-ca"' in b:
        b = b.replace('name = "bad-ca"', f'name = "bad-ca"\nca_file = "{out}/other-ca.pem"')
    elif 'name = "bad-pin"' in b:
        b = b.replace('name = "bad-pin"', 'name = "bad-pin"\ntls_fingerprint = "sha256:' + ":".join(["AB"]*32) + '"')
    elif 'name = "bad-password"' in b:
        b = re.sub(r'(?m)^password(_file|_env)? = ".*"$', 'password = "wrong-password"', b)
    res.append(b)
text = "".join(res)
text += '''
[[servers]]
name = "bad-port"
url = "https://127.0.0.1:1"
username = "SKLMAdmin"
password = "x"

[[servers]]
name = "html-page"
url = "http://127.0.0.1:18999"
allow_insecure_http = true
username = "SKLMAdmin"
password = "x"
'''
(out / "watcher.toml").write_text(text)
PY
$PY "$here/html_page.py" 18999 & html=$!
start=$(date +%s.%N)
$PY -m watcher run -c "$out/watcher.toml" > "$out/run.stdout" 2> "$out/run.stderr" & d=$!
sleep "$secs"
$PY -m watcher status -c "$out/watcher.toml" > "$out/status.txt" 2>&1
$PY -m watcher status -c "$out/watcher.toml" --json > "$out/status.json" 2>&1
$PY -m watcher events -c "$out/watcher.toml" > "$out/events.txt" 2>&1
kill -TERM $d; wait $d
kill $sim $html; wait 2>/dev/null
$PY -m watcher status -c "$out/watcher.toml" > "$out/status-stopped.txt" 2>&1
echo done
