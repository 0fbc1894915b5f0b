#!/bin/sh
# coldfuse-healthcheck [PATH]: the server image's HEALTHCHECK. Exits 0 when coldfused's
# HTTP listener answers PATH (default /readyz: 200 once it serves, 503 while it starts or
# shuts down) on 127.0.0.1:$COLDFUSE_HTTP_PORT (default 9090, as --http_listen in
# /etc/coldfuse/coldfused.flags). HTTPS when the server has TLS; its certificate is not
# checked here (loopback, and nothing secret is sent); plain HTTP with --insecure.
path="${1:-/readyz}"
port="${COLDFUSE_HTTP_PORT:-9090}"
curl -fsS -o /dev/null --max-time 4 --insecure "https://127.0.0.1:$port$path" 2>/dev/null \
  || exec curl -fsS -o /dev/null --max-time 4 "http://127.0.0.1:$port$path"
