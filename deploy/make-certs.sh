#!/usr/bin/env bash
# Creates a private CA, a server certificate and client certificates for coldfuse's
# TLS / mutual TLS, using only the openssl CLI (works with Debian 12's OpenSSL 3.0).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: make-certs.sh OUT_DIR [--server-name NAME ...] [--server-ip IP ...] [--client NAME ...]
                             [--group GROUP]

Creates in OUT_DIR (mode 0700; private keys mode 0600):
  ca.key, ca.crt           a CA (EC P-256, 10 years, CN "coldfuse CA"); an existing CA is kept
  server.key, server.crt   signed by the CA; subjectAltName = every --server-name and
                           --server-ip, plus localhost and 127.0.0.1 (so tools on the server
                           box connect to localhost); extendedKeyUsage serverAuth; (re)made
                           when the CA is new or when --server-name/--server-ip is given,
                           else kept
  --group GROUP            the group the server runs as (e.g. coldfuse, for the systemd
                           unit): OUT_DIR becomes 0750 and server.key 0640 with that group,
                           so the server can read its certificate, key and the CA; ca.key
                           and client keys stay 0600 (owner only)
  NAME.key, NAME.crt       for each --client NAME: CN=NAME, extendedKeyUsage clientAuth;
                           an existing pair is kept

Running it again on the same OUT_DIR keeps the CA, so it can add clients later:
  deploy/make-certs.sh /etc/coldfuse/tls --client alice
Server:  coldfused --tls_cert=OUT/server.crt --tls_key=OUT/server.key [--tls_client_ca=OUT/ca.crt]
Client:  --tls_ca=OUT/ca.crt [--tls_cert=OUT/alice.crt --tls_key=OUT/alice.key]
EOF
}

die() { echo "make-certs: $*" >&2; exit 1; }

if [ $# -eq 0 ]; then usage >&2; exit 2; fi
case "$1" in -h|--help) usage; exit 0 ;; esac
out="$1"; shift
case "$out" in -*) die "first argument must be OUT_DIR, got '$out' (see --help)" ;; esac

names=(); ips=(); clients=(); group=
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --server-name) [ $# -ge 2 ] || die "--server-name needs a value"; names+=("$2"); shift 2 ;;
    --server-ip)   [ $# -ge 2 ] || die "--server-ip needs a value"; ips+=("$2"); shift 2 ;;
    --client)      [ $# -ge 2 ] || die "--client needs a value"; clients+=("$2"); shift 2 ;;
    --group)       [ $# -ge 2 ] || die "--group needs a value"; group="$2"; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
server_explicit=0
if [ ${#names[@]} -gt 0 ] || [ ${#ips[@]} -gt 0 ]; then server_explicit=1; fi
# The first name is the certificate's CN; localhost and 127.0.0.1 are always in it too.
have() { local x="$1"; shift; for y in "$@"; do [ "$x" = "$y" ] && return 0; done; return 1; }
have localhost "${names[@]+"${names[@]}"}" || names+=(localhost)
have 127.0.0.1 "${ips[@]+"${ips[@]}"}" || ips+=(127.0.0.1)
# A folder shared with the server's group by an earlier run stays shared.
if [ -z "$group" ] && [ -d "$out" ] && [ "$(stat -c %a "$out")" = 750 ]; then
  group="$(stat -c %G "$out")"
fi
if [ -n "$group" ]; then
  [[ "$group" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || die "bad --group '$group'"
  getent group "$group" >/dev/null || [[ "$group" =~ ^[0-9]+$ ]] \
    || die "--group '$group': no such group (create it first, e.g. useradd --system $group)"
fi

for n in "${names[@]}"; do
  [[ "$n" =~ ^[A-Za-z0-9*]([A-Za-z0-9.*-]*[A-Za-z0-9])?$ ]] || die "bad --server-name '$n'"
done
for ip in "${ips[@]}"; do
  [[ "$ip" =~ ^[0-9A-Fa-f.:]+$ ]] || die "bad --server-ip '$ip'"
done
for c in "${clients[@]}"; do
  # Used as a file name and as a CN: no slashes, no leading dot, not the reserved names.
  [[ "$c" =~ ^[A-Za-z0-9_][A-Za-z0-9_.@-]*$ ]] || die "bad --client '$c': use letters, digits, _ . @ -"
  case "$c" in ca|server) die "--client '$c' would overwrite $c.key/$c.crt" ;; esac
done

command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
umask 077
mkdir -p "$out"
chmod 0700 "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

quiet() {  # quiet CMD...: runs CMD, shows its stderr only if it fails
  if ! "$@" 2>"$tmp/stderr"; then
    cat "$tmp/stderr" >&2
    die "failed: $*"
  fi
}

newkey() {  # newkey PATH: an EC P-256 private key, mode 0600
  quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.tmp"
  chmod 0600 "$1.tmp"
  mv -f "$1.tmp" "$1"
}

sign() {  # sign NAME CN EXTFILE: NAME.key -> NAME.crt signed by the CA
  local name="$1" cn="$2" ext="$3"
  quiet openssl req -new -key "$out/$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr"
  quiet openssl x509 -req -in "$tmp/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
    -extfile "$ext" -out "$out/$name.crt.tmp"
  chmod 0644 "$out/$name.crt.tmp"
  mv -f "$out/$name.crt.tmp" "$out/$name.crt"
}

made=()
new_ca=0
if [ -f "$out/ca.key" ] && [ -f "$out/ca.crt" ]; then
  openssl x509 -in "$out/ca.crt" -noout -checkend 0 >/dev/null \
    || die "$out/ca.crt has expired; move ca.key/ca.crt away to make a new CA"
  echo "make-certs: keeping existing CA $out/ca.crt"
elif [ -f "$out/ca.key" ] || [ -f "$out/ca.crt" ]; then
  die "$out has only one of ca.key/ca.crt; restore the other or remove both"
else
  newkey "$out/ca.key"
  quiet openssl req -new -x509 -key "$out/ca.key" -subj "/CN=coldfuse CA" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$out/ca.crt.tmp"
  chmod 0644 "$out/ca.crt.tmp"
  mv -f "$out/ca.crt.tmp" "$out/ca.crt"
  new_ca=1
  made+=("$out/ca.key" "$out/ca.crt")
fi

if [ $new_ca -eq 1 ] || [ $server_explicit -eq 1 ] || [ ! -f "$out/server.crt" ] || [ ! -f "$out/server.key" ]; then
  san=""
  for n in "${names[@]}"; do san+="${san:+,}DNS:$n"; done
  for ip in "${ips[@]}"; do san+="${san:+,}IP:$ip"; done
  cat >"$tmp/server.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
  newkey "$out/server.key"
  sign server "${names[0]}" "$tmp/server.ext"
  made+=("$out/server.key" "$out/server.crt (SAN $san)")
else
  echo "make-certs: keeping existing server certificate $out/server.crt"
fi

cat >"$tmp/client.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
for c in "${clients[@]}"; do
  if [ $new_ca -eq 0 ] && [ -f "$out/$c.key" ] && [ -f "$out/$c.crt" ]; then
    echo "make-certs: keeping existing client certificate $out/$c.crt"
    continue
  fi
  newkey "$out/$c.key"
  sign "$c" "$c" "$tmp/client.ext"
  made+=("$out/$c.key" "$out/$c.crt (CN $c)")
done

if [ -n "$group" ]; then
  # The server (running as a member of the group) reads: the folder, its certificate and
  # key, and the CA certificate (for --tls_client_ca). Nothing else is shared.
  chgrp "$group" "$out" "$out/server.key" "$out/server.crt" "$out/ca.crt" \
    || die "cannot give $out to group '$group' (run as root)"
  chmod 0750 "$out"
  chmod 0640 "$out/server.key"
  echo "make-certs: $out (0750), server.key (0640), server.crt and ca.crt belong to group $group"
fi

if [ ${#made[@]} -eq 0 ]; then
  echo "make-certs: nothing new in $out"
else
  for m in "${made[@]}"; do echo "make-certs: made $m"; done
fi
