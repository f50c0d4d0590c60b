#!/bin/bash
# Entrypoint of upstreamd/pebble: writes pebble's JSON config from the env,
# then runs pebble-challtestsrv (DNS only, on 127.0.0.1:$DNS_PORT) and pebble
# (resolving through it) and exits as soon as either of them exits.
set -euo pipefail

: "${PEBBLE_LISTEN:=127.0.0.1:14000}" "${PEBBLE_MANAGEMENT:=127.0.0.1:15000}"
: "${PEBBLE_HTTP_PORT:=5002}" "${PEBBLE_TLS_PORT:=5001}" "${PEBBLE_CERT_VALIDITY:=0}"
: "${DNS_PORT:=8053}" "${CHALLTESTSRV_MANAGEMENT:=127.0.0.1:8055}"

for v in PEBBLE_HTTP_PORT PEBBLE_TLS_PORT PEBBLE_CERT_VALIDITY DNS_PORT; do
	if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
		echo "pebble-entrypoint: $v must be a number, got '${!v}'" >&2
		exit 2
	fi
done

# certificateValidityPeriod 0 means pebble's default (157766400 s, 5 years).
cat > /etc/pebble/pebble-config.json <<JSON
{
  "pebble": {
    "listenAddress": "$PEBBLE_LISTEN",
    "managementListenAddress": "$PEBBLE_MANAGEMENT",
    "certificate": "/etc/pebble/cert.pem",
    "privateKey": "/etc/pebble/key.pem",
    "httpPort": $PEBBLE_HTTP_PORT,
    "tlsPort": $PEBBLE_TLS_PORT,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false,
    "certificateValidityPeriod": $PEBBLE_CERT_VALIDITY
  }
}
JSON

# Every name resolves to 127.0.0.1 (A) and has no AAAA record: pebble's VA
# would prefer an IPv6 answer. challtestsrv's own HTTP-01/HTTPS/TLS-ALPN
# responders are disabled so they take no ports.
pebble-challtestsrv -dns01 "127.0.0.1:$DNS_PORT" -management "$CHALLTESTSRV_MANAGEMENT" \
	-defaultIPv4 127.0.0.1 -defaultIPv6 "" -http01 "" -https01 "" -tlsalpn01 "" &
pebble -config /etc/pebble/pebble-config.json -dnsserver "127.0.0.1:$DNS_PORT" &

# bash as PID 1 ignores SIGTERM unless trapped: pass it on.
trap 'kill -TERM $(jobs -p) 2>/dev/null; wait; exit 143' TERM INT
# Both should run forever: any exit, even with status 0, is a failure.
rc=0
wait -n || rc=$?
echo "pebble-entrypoint: a process exited (status $rc), stopping" >&2
[ "$rc" -ne 0 ] || rc=1
kill -TERM $(jobs -p) 2>/dev/null || true
wait || true
exit "$rc"
