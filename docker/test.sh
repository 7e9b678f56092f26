#!/usr/bin/env bash
# `make docker-test`: the image and docker-compose.yml, run for real.
#
# Installs a Docker engine if there is none (Debian's docker.io and docker-compose),
# starts dockerd if none runs, builds the images (from a base made of Debian's own
# packages where Docker Hub cannot be reached, from a wheelhouse where the build
# cannot reach PyPI), then checks, through the load balancer's published port:
# the healthcheck, /sample (plain and streamed), /score, /v1/completions and the
# playground; that the API runs as an unprivileged user; a model trained with the
# `train` profile, served without a restart; two replicas behind the balancer,
# each answering; and the models volume surviving `down` and `up`. Everything it
# started is removed at the end, pass or fail (the images stay, as a build cache).
# Any failure ends it with a non-zero status and the reason; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

project="rnnlmtest$$"
export COMPOSE_PROJECT_NAME="$project"
texts=$(mktemp -d)
chmod 755 "$texts"  # the train service reads it as the image's unprivileged user
say() { printf 'docker-test [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# ---- the engine
if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null \
    || { ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; }; then
    say "installing Docker (Debian's docker.io, docker-compose, debootstrap)"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose \
        debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd"
    $sudo sh -c 'nohup dockerd >/tmp/rnnlm-dockerd.log 2>&1 &'
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || fail "dockerd did not start (see /tmp/rnnlm-dockerd.log)"
fi
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
say "engine $(docker version --format '{{.Server.Version}}'), ${compose[*]}"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export RNNLM_PORT="$port" TEXTS_DIR="$texts"
base="http://127.0.0.1:$port"

cleanup() {
    status=$?
    if [ $status -ne 0 ]; then
        say "logs of the failed run:"
        "${compose[@]}" logs --no-color --tail 60 >&2 || true
    fi
    "${compose[@]}" --profile train down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$texts"
    [ $status -eq 0 ] && say "PASS" || say "FAIL"
}
trap cleanup EXIT

# ---- the base images, and where the wheels come from
if timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1 \
    && timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    export BASE_IMAGE=python:3.11-slim LB_BASE_IMAGE=debian:bookworm-slim
    say "Docker Hub reachable: bases $BASE_IMAGE and $LB_BASE_IMAGE"
else
    say "Docker Hub unreachable: a base image from Debian's packages (docker/base-image.sh)"
    BASE_IMAGE=$(docker/base-image.sh)
    export BASE_IMAGE LB_BASE_IMAGE="$BASE_IMAGE"
fi
if ! docker run --rm "$BASE_IMAGE" python3 -c \
    "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/', timeout=10)" \
    >/dev/null 2>&1; then
    say "the build cannot reach PyTorch's index: wheels from the host (docker/wheelhouse.sh)"
    docker/wheelhouse.sh
fi

# ---- build and start
say "building the images"
"${compose[@]}" build --quiet api lb >&2 || fail "the build failed"
say "starting the api and the load balancer on port $port"
"${compose[@]}" up -d >&2 || fail "docker compose up failed"

healthy() {  # wait until every api container is healthy and the balancer answers /ready
    local want=$1 deadline=$((SECONDS + 300))
    while [ $SECONDS -lt $deadline ]; do
        local ids n_ok=0
        ids=$("${compose[@]}" ps -q api)
        for id in $ids; do
            [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] && n_ok=$((n_ok + 1))
        done
        if [ "$n_ok" -ge "$want" ] && curl -sf "$base/ready" >/dev/null 2>&1; then
            return 0
        fi
        sleep 2
    done
    fail "$want healthy api container(s) and the balancer's /ready not seen in 300 s"
}
healthy 1
say "healthy"

# ---- the routes, through the published port
check() {  # check NAME PYTHON-EXPRESSION-ON-r (a dict) CURL-ARGS...
    local name=$1 expr=$2
    shift 2
    local body
    body=$(curl -sS --fail-with-body --max-time 60 "$@") || fail "$name: $body"
    printf '%s' "$body" | python3 -c "import json, sys; r = json.load(sys.stdin); sys.exit(0 if ($expr) else 1)" \
        || fail "$name: unexpected answer: $body"
    say "$name: ok"
}
json=(-H 'content-type: application/json')
check "/ready lists the demo" '"demo" in r["models"]' "$base/ready"
check "/sample" 'len(r["samples"]) == 2 and r["usage"]["completion_tokens"] > 0' "${json[@]}" \
    -d '{"prompt": "Return the ", "max_tokens": 40, "seed": 1, "n": 2}' "$base/sample"
check "/score" 'r["results"][0]["logprob"] > r["results"][1]["logprob"]' "${json[@]}" \
    -d '{"texts": ["Return the number of items.", "items of number the Return."]}' "$base/score"
check "/v1/completions" 'r["choices"][0]["text"] != "" or r["choices"][0]["finish_reason"] == "stop"' \
    "${json[@]}" -d '{"model": "demo", "prompt": "The ", "max_tokens": 20, "seed": 2}' \
    "$base/v1/completions"
stream=$(curl -sSN --max-time 60 "${json[@]}" \
    -d '{"prompt": "The ", "max_tokens": 30, "seed": 3, "stream": true}' "$base/sample")
grep -q '"type": "token"' <<<"$stream" && grep -q '"type": "done"' <<<"$stream" \
    || fail "streamed /sample through the balancer: $stream"
say "/sample streamed (SSE) through the balancer: ok"
page=$(curl -sS --fail --max-time 30 "$base/")
grep -q "<title>rnnlm playground</title>" <<<"$page" || fail "the playground page: ${page:0:200}"
say "playground page: ok"

# ---- an unprivileged user
uid=$("${compose[@]}" exec -T api id -u | tr -d '\r')
[ "$uid" = 10001 ] || fail "the api runs as uid $uid, not the image's unprivileged user 10001"
say "the api runs as uid $uid: ok"

# ---- a model trained with the train profile, served without a restart
python3 - "$texts/docs.txt" <<'EOF'
import sys, pathlib
text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(pathlib.Path("docs").glob("*.md")))
pathlib.Path(sys.argv[1]).write_text(text, encoding="utf-8")
EOF
say "training a small model with the train profile"
MODEL_NAME=mine CORPUS_ARGS="--tokenizer char" \
    TRAIN_ARGS="--max-steps 40 --eval-every 20 --hidden 32 --embedding 16 --layers 1 --ngram-order 4" \
    "${compose[@]}" --profile train run --rm train >&2 || fail "the train service failed"
deadline=$((SECONDS + 60))
until curl -sf "$base/models" | python3 -c 'import json, sys; sys.exit(0 if "mine" in [m["name"] for m in json.load(sys.stdin)["models"]] else 1)'; do
    [ $SECONDS -lt $deadline ] || fail "the trained model was not picked up within 60 s"
    sleep 2
done
check "the trained model is served" 'r["results"][0]["num_tokens"] > 0' "${json[@]}" \
    -d '{"model": "mine", "texts": ["the model"]}' "$base/score"

# ---- two replicas behind the balancer
say "scaling the api to 2 replicas"
"${compose[@]}" up -d --scale api=2 >&2 || fail "scaling failed"
healthy 2
for i in $(seq 40); do
    curl -sf "${json[@]}" -d '{"texts": ["a b c"]}' "$base/score" >/dev/null || fail "request $i via the balancer"
done
served=0
for id in $("${compose[@]}" ps -q api); do
    n=$(docker exec "$id" python -c "
import urllib.request as u
text = u.urlopen('http://127.0.0.1:8000/metrics', timeout=5).read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines()
              if l.startswith('rnnlm_requests_total') and 'route=\"/score\"' in l)))")
    say "replica ${id:0:12} answered $n /score request(s)"
    [ "$n" -gt 0 ] && served=$((served + 1))
done
[ "$served" -ge 2 ] || fail "the balancer sent every request to one replica"
say "both replicas served requests: ok"

# ---- the models volume survives down and up
say "down (keeping the volume), then up again"
"${compose[@]}" down >&2
"${compose[@]}" up -d >&2
healthy 1
check "the trained model survived down/up" '"mine" in [m["name"] for m in r["models"]]' "$base/models"
