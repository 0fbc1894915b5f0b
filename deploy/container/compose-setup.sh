#!/usr/bin/env bash
# deploy/compose.yaml's one-shot setup, run as root in the server image (it has
# make-certs.sh, openssl and coldfusectl). Safe to run again: what exists is kept.
#
#   compose-setup certs     before the server starts. A CA (in /ca, with the operator's
#                           client certificate) and, for each folder /secrets/NAME:
#                             server      ca.crt server.crt server.key   (uid 10001)
#                             prometheus  ca.crt                         (uid 65534)
#                             any other   ca.crt client.crt client.key, a contributor
#                                         named NAME                     (uid 10001)
#   compose-setup tokens    once the server serves: base v0 (the digits MLP, unless the
#                           server has a model), a contributor token in /secrets/NAME/token
#                           for each contributor, a viewer token for Prometheus
#   compose-setup ctl ARGS  coldfusectl as the operator, e.g. `ctl status`, `ctl rounds`
#   compose-setup ca        prints the CA certificate (for a browser, or clients elsewhere)
set -euo pipefail

SERVER_NAME=coldfused           # the compose service: the name clients connect to
SERVER="${COLDFUSE_SERVER:-$SERVER_NAME:7878}"
SPEC="${COLDFUSE_SPEC:-mlp:64,128,64}"
FUSION="${COLDFUSE_FUSION:-mean}"
OPERATOR_TOKEN=/server-data/operator.token
COLDFUSE_UID=10001              # the server and client images' user
PROMETHEUS_UID=65534            # nobody: the prometheus image's user (prom/prometheus's too)

say() { echo "compose-setup: $*"; }

parties() {  # the folder names under /secrets, one a line
  local d
  for d in /secrets/*/; do [ -d "$d" ] && basename "$d"; done
}

owner_of() {  # owner_of NAME: the uid that reads /secrets/NAME
  if [ "$1" = prometheus ]; then echo "$PROMETHEUS_UID"; else echo "$COLDFUSE_UID"; fi
}

give() {  # give NAME MODE SOURCE TARGET: copy SOURCE to /secrets/NAME/TARGET for its user
  local uid
  uid="$(owner_of "$1")"
  install -m "$2" -o "$uid" -g "$uid" "$3" "/secrets/$1/$4.tmp"
  mv -f "/secrets/$1/$4.tmp" "/secrets/$1/$4"
}

certs() {
  local clients=(--client operator) name
  for name in $(parties); do
    case "$name" in server | prometheus) ;; *) clients+=(--client "$name") ;; esac
  done
  # The server's certificate carries the service's name and localhost/127.0.0.1 (the
  # ports published on this machine's loopback); made once, like everything else here.
  local server=()
  [ -s /ca/server.crt ] || server=(--server-name "$SERVER_NAME")
  make-certs.sh /ca "${server[@]}" "${clients[@]}"
  for name in $(parties); do
    chown "$(owner_of "$name"):$(owner_of "$name")" "/secrets/$name"
    chmod 0700 "/secrets/$name"
    give "$name" 0444 /ca/ca.crt ca.crt
    case "$name" in
      server)
        give server 0444 /ca/server.crt server.crt
        give server 0400 /ca/server.key server.key ;;
      prometheus) ;;
      *)
        give "$name" 0444 "/ca/$name.crt" client.crt
        give "$name" 0400 "/ca/$name.key" client.key ;;
    esac
    say "/secrets/$name: $(cd "/secrets/$name" && echo *)"
  done
}

ctl() {
  coldfusectl --server="$SERVER" --tls_ca=/ca/ca.crt --tls_server_name="$SERVER_NAME" \
    --tls_cert=/ca/operator.crt --tls_key=/ca/operator.key --token_file="$OPERATOR_TOKEN" "$@"
}

token() {  # token NAME ROLE: a token in /secrets/NAME/token, unless one is there
  local name="$1" role="$2" tmp
  if [ -s "/secrets/$name/token" ]; then
    say "keeping /secrets/$name/token"
    return
  fi
  tmp="$(mktemp -d)"
  # A token of that name without its file (the volume was removed): replace it.
  if ! ctl token create --name="$name" --role="$role" --out="$tmp/token" 2>"$tmp/err"; then
    if grep -q ALREADY_EXISTS "$tmp/err"; then
      ctl token revoke --name="$name"
      ctl token create --name="$name" --role="$role" --out="$tmp/token"
    else
      cat "$tmp/err" >&2
      exit 1
    fi
  fi
  give "$name" 0400 "$tmp/token" token
  rm -rf "$tmp"
  say "made a $role token for $name in /secrets/$name/token"
}

tokens() {
  local i name
  # The server writes the operator token at its first start, before it serves.
  for i in $(seq 120); do [ -s "$OPERATOR_TOKEN" ] && break; sleep 1; done
  [ -s "$OPERATOR_TOKEN" ] || { say "no $OPERATOR_TOKEN after 120 s: is coldfused running?"; exit 1; }
  local status
  status="$(ctl status --json)"
  if grep -q '"initialized": true' <<<"$status"; then
    say "the server already has a model"
  else
    ctl init --spec="$SPEC" --seed=1 --fusion="$FUSION"
  fi
  for name in $(parties); do
    case "$name" in
      server) ;;
      prometheus) token prometheus viewer ;;
      *) token "$name" contributor ;;
    esac
  done
  ctl status
}

case "${1:-}" in
  certs) certs ;;
  tokens) tokens ;;
  ctl) shift; ctl "$@" ;;
  ca) cat /ca/ca.crt ;;
  *) echo "usage: compose-setup certs | tokens | ctl COLDFUSECTL_ARGS... | ca" >&2; exit 2 ;;
esac
