# Shared by the repro scripts: start/stop one `hindsight serve` on free loopback ports.
HS="node $(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/bin/hindsight.js"
D=$(mktemp -d /tmp/hs-repro-XXXXXX)
trap '[ -n "${PID:-}" ] && kill -KILL $PID 2>/dev/null; rm -rf "$D" "$D.out" "$D.err"' EXIT
start() {
  rm -f "$D.out"
  $HS serve --data "$D" --nbd 127.0.0.1:0 --api 127.0.0.1:0 --json --log-level warn "$@" > "$D.out" 2> "$D.err" &
  PID=$!
  while ! [ -s "$D.out" ]; do sleep 0.05; done
  NBD=$(head -1 "$D.out" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["nbdPort"])')
  API=$(head -1 "$D.out" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["api"])')
  URI=nbd://127.0.0.1:$NBD/v
}
stop() { kill -TERM $PID; wait $PID; echo "  (daemon stopped, exit $?)"; PID=; }
info() { $HS volume info v --json --api $API | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print("  volume v:", d["state"], d["error"], "seqLast", d["seqLast"])'; }
SEG="$D/volumes/v/journal/00000001.seg"
