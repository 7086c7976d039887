#!/usr/bin/env bash
# Smoke run of an ARM build of edgeloop under qemu-user, against a model the
# host (x86-64) build trained, over MQTT with TLS and a client certificate.
#
#   .ci/arm-smoke.sh aarch64-unknown-linux-gnu      (or armv7-unknown-linux-gnueabihf)
#
# Needs: the cross gcc and qemu-user (see .ci/run), mosquitto, openssl,
# python3. Builds both binaries (debug profile) if needed
# (ARM_SMOKE_NO_BUILD=1: use those already in $CARGO_TARGET_DIR). Steps:
#  1. a CA, a broker certificate (127.0.0.1) and a client certificate (openssl);
#     mosquitto with a TLS listener that requires the client certificate and
#     a plain listener, on free loopback ports;
#  2. the host binary runs the daemon on the plain listener, 600 labelled
#     rows are replayed, it trains version 1 (min_labels 500), the row to
#     predict is predicted over HTTP, and the daemon stops;
#  3. the ARM binary, under qemu: `edgeloop check-config`, then the daemon on
#     the host's store (redb file and model written by the x86-64 build),
#     connected to mosquitto over TLS: /healthz reports MQTT connected and
#     subscribed, it serves version 1, its HTTP prediction of the row equals
#     the host's (probabilities within 1e-5; the anomaly fields too, its
#     scorer warmed from the host's store at start), and an unlabelled row replayed
#     on the plain listener reaches it over TLS and its prediction goes out
#     over TLS (predictions_published in /v1/stats).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:?usage: .ci/arm-smoke.sh TARGET}
case "$TARGET" in
  aarch64-unknown-linux-gnu) QEMU="qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
  armv7-unknown-linux-gnueabihf) QEMU="qemu-arm -L /usr/arm-linux-gnueabihf" ;;
  *) echo "arm-smoke: unknown target $TARGET" >&2; exit 2 ;;
esac
export PATH="$PATH:/usr/sbin"
TGT=${CARGO_TARGET_DIR:-target}
if [ "${ARM_SMOKE_NO_BUILD:-0}" != 1 ]; then
  cargo build --locked --quiet --bin edgeloop
  cargo build --locked --quiet --bin edgeloop --target "$TARGET"
fi
HOST_BIN="$TGT/debug/edgeloop"
ARM_BIN="$TGT/$TARGET/debug/edgeloop"

WORK=$(mktemp -d)
chmod 777 "$WORK"   # mosquitto started as root drops to its own user
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() {
  echo "arm-smoke FAILED: $*" >&2
  for f in "$WORK"/*.log; do echo "--- $f" >&2; tail -n 30 "$f" >&2; done
  exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# http METHOD PORT PATH [BODY]: prints the response body; fails on non-2xx.
http() {
  python3 - "$@" <<'EOF'
import sys, urllib.request
method, port, path = sys.argv[1:4]
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                             headers={"content-type": "application/json"})
print(urllib.request.urlopen(req, timeout=10).read().decode())
EOF
}
# wait_for SECONDS WHAT CMD...: retries CMD every 0.5 s.
wait_for() {
  local limit=$1 what=$2; shift 2
  local until=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.5
  done
}
json_get() { python3 -c "import json,sys; v=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# 1. Certificates and mosquitto.
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=edgeloop-smoke-ca -keyout ca-key.pem -out ca.pem \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=edgeloop-smoke-$who" -keyout "$who-key.pem" -out "$who.csr" 2>/dev/null
  if [ "$who" = server ]; then
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$who.ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' > "$who.ext"
  fi
  openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
    -extfile "$who.ext" -out "$who.pem" 2>/dev/null
done
chmod 644 ./*.pem
cd - >/dev/null
PLAIN=$(free_port); TLS=$(free_port); HTTP_HOST=$(free_port); HTTP_ARM=$(free_port)
cat > "$WORK/mosquitto.conf" <<EOF
per_listener_settings true
max_queued_messages 0
listener $PLAIN 127.0.0.1
allow_anonymous true
listener $TLS 127.0.0.1
allow_anonymous true
cafile $WORK/ca.pem
certfile $WORK/server.pem
keyfile $WORK/server-key.pem
require_certificate true
EOF
mosquitto -c "$WORK/mosquitto.conf" > "$WORK/mosquitto.log" 2>&1 &
PIDS+=($!)
wait_for 10 "mosquitto" python3 -c "import socket; socket.create_connection(('127.0.0.1', $TLS))"

pipeline_conf() {
  cat <<EOF
[[pipelines]]
name = "occupancy"
topics = ["sensors/+/occupancy"]
features = ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"]
label = "Occupancy"
classes = ["0", "1"]
timestamp = "Date"
[pipelines.model]
min_labels = 500
EOF
}
cat > "$WORK/host.toml" <<EOF
[store]
path = "$WORK/host.redb"
[mqtt]
broker = "mqtt://127.0.0.1:$PLAIN"
client_id = "smoke-host"
[http]
listen = "127.0.0.1:$HTTP_HOST"
$(pipeline_conf)
EOF

# 2. The host trains version 1.
"$HOST_BIN" run --config "$WORK/host.toml" > "$WORK/host.log" 2>&1 &
HOST_PID=$!; PIDS+=($HOST_PID)
subscribed() { [ "$(http GET "$1" /healthz | json_get 'v["mqtt_subscribed"]')" = True ]; }
wait_for 60 "the host daemon's subscription" subscribed "$HTTP_HOST"
"$HOST_BIN" replay --file data/occupancy_uci/datatraining.txt --topic sensors/room1/occupancy \
  --broker "mqtt://127.0.0.1:$PLAIN" --limit 600 > "$WORK/replay.log" 2>&1
serving() { [ "$(http GET "$1" /v1/pipelines | json_get 'v["pipelines"][0]["serving_version"]')" = 1 ]; }
wait_for 120 "the host's model version 1" serving "$HTTP_HOST"
ROW='{"rows":[{"Temperature":23.7,"Humidity":26.272,"Light":585.2,"CO2":749.2,"HumidityRatio":0.00476416302416414}]}'
HOST_PRED=$(http POST "$HTTP_HOST" /v1/pipelines/occupancy/predict "$ROW")
kill -TERM "$HOST_PID"; wait "$HOST_PID" || fail "the host daemon did not stop cleanly"
echo "arm-smoke: host trained version 1 and predicts $HOST_PRED"

# 3. The ARM binary.
cat > "$WORK/arm.toml" <<EOF
[store]
path = "$WORK/host.redb"
[mqtt]
broker = "mqtts://127.0.0.1:$TLS"
client_id = "smoke-arm"
tls_ca_file = "$WORK/ca.pem"
tls_cert_file = "$WORK/client.pem"
tls_key_file = "$WORK/client-key.pem"
[http]
listen = "127.0.0.1:$HTTP_ARM"
$(pipeline_conf)
EOF
start=$SECONDS
$QEMU "$ARM_BIN" check-config --config "$WORK/arm.toml" > "$WORK/check-config.log" 2>&1 \
  || fail "check-config under qemu"
grep -q "mqtts://127.0.0.1:$TLS" "$WORK/check-config.log" || fail "check-config did not print the mqtts broker"
$QEMU "$ARM_BIN" run --config "$WORK/arm.toml" > "$WORK/arm.log" 2>&1 &
ARM_PID=$!; PIDS+=($ARM_PID)
healthy() {
  local h; h=$(http GET "$HTTP_ARM" /healthz) || return 1
  [ "$(echo "$h" | json_get 'v["mqtt_connected"] and v["mqtt_subscribed"]')" = True ]
}
wait_for 120 "the ARM daemon connected over TLS (/healthz)" healthy
echo "arm-smoke: ARM daemon up and subscribed over TLS after $((SECONDS - start)) s"
serving "$HTTP_ARM" || fail "the ARM daemon does not serve the host's version 1"
ARM_PRED=$(http POST "$HTTP_ARM" /v1/pipelines/occupancy/predict "$ROW")
echo "arm-smoke: ARM predicts $ARM_PRED"
python3 - "$HOST_PRED" "$ARM_PRED" <<'EOF' || fail "ARM and host predictions differ"
import json, sys
h, a = (json.loads(s) for s in sys.argv[1:3])
assert a["model_version"] == h["model_version"] == 1, (h, a)
hp, ap = h["predictions"][0], a["predictions"][0]
assert ap["label"] == hp["label"], (hp, ap)
for k, p in hp["probabilities"].items():
    assert abs(ap["probabilities"][k] - p) <= 1e-5, (k, p, ap["probabilities"][k])
# The anomaly scorer warmed from the host's store at start (daemon::warm_anomaly)
# sees the row as the host's scorer did after learning the 600 rows live.
assert ap["anomaly"] == hp["anomaly"] and ap.get("anomaly_rule") == hp.get("anomaly_rule"), (hp, ap)
for k in ("anomaly_score", "residual_z"):
    assert abs(ap[k] - hp[k]) <= 1e-6 * max(1.0, abs(hp[k])), (k, hp[k], ap[k])
EOF
# One unlabelled reading in (plain listener -> TLS to the ARM daemon), its
# prediction out over TLS.
head -n 2 data/occupancy_uci/datatest.txt > "$WORK/one.csv"
"$HOST_BIN" replay --file "$WORK/one.csv" --topic sensors/room1/occupancy \
  --broker "mqtt://127.0.0.1:$PLAIN" --drop-column Occupancy > "$WORK/replay-one.log" 2>&1
published() { [ "$(http GET "$HTTP_ARM" /v1/stats | json_get 'v["predictions_published"]')" -ge 1 ]; }
wait_for 60 "the ARM daemon's prediction published over TLS" published
kill -TERM "$ARM_PID"; wait "$ARM_PID" || fail "the ARM daemon did not stop cleanly on SIGTERM"
echo "arm-smoke: $TARGET OK ($((SECONDS - start)) s under qemu)"
