#!/bin/sh
# The proxy's entrypoint in the compose stacks (docker-compose.yml and docker-compose.node.yml
# mount it and run it with sh; its arguments are ollama-metrics's). PROXY_NODE names the machine on every record,
# Loki stream and ollama_proxy_info. Unset or empty in deploy/node.env, it is the name of the
# machine the container runs on, read from the host's /etc/hostname (mounted read-only at
# /etc/host-hostname): the container's own host name would be its random id. Characters a node
# name cannot hold become "-", and it is cut to 64, as the proxy does with its host name.
set -eu
if [ -z "${PROXY_NODE:-}" ]; then
    file="${HOST_HOSTNAME_FILE:-/etc/host-hostname}"
    if [ -r "$file" ] && [ -f "$file" ]; then
        PROXY_NODE=$(head -n 1 "$file" | tr -d '\r\n' | tr -c 'A-Za-z0-9._-' '-' | cut -c 1-64)
    fi
    if [ -z "${PROXY_NODE:-}" ]; then
        echo "node entrypoint: no host name in $file: set PROXY_NODE in deploy/.env or deploy/node.env" >&2
        exit 2
    fi
    export PROXY_NODE
fi
exec ollama-metrics "$@"
