#!/bin/bash
# host-entrypoint.sh: PID 1 of an upstreamd/host container, a test "machine".
#
#  1. Starts dockerd (overlay2 on the /var/lib/docker volume) listening on
#     unix:///var/run/docker.sock and tcp://0.0.0.0:2375; extra arguments to
#     the container are passed on to dockerd (e.g. --insecure-registry ...).
#  2. Once the engine answers, loads every /images/*.tar into it; a tarball
#     is loaded again only when it is newer than the last load (the engine's
#     images live in the volume, so they survive a restart of the host).
#  3. Touches /run/host-ready (a healthcheck for compose).
#  4. With UPSTREAMD_AUTOSTART=1 and a spec at $UPSTREAMD_CONFIG, runs
#     `/usr/local/bin/upstreamd run`, restarting it 2 s after it exits. Its
#     output goes to /var/log/upstreamd.log and to this container's stdout;
#     /run/upstreamd.pid holds its pid while it runs, /run/upstreamd.exit its
#     last exit status (the same files the Go harness's StartDaemon writes).
#     The binary is not in the image: copy it in or bind-mount it.
#
# SIGTERM stops upstreamd first (so it can hand over), then dockerd.
set -u

log() { echo "host-entrypoint: $*" >&2; }

# A start after `docker kill` is a reboot: /run starts empty, on a tmpfs.
# Not only for tidiness: on the outer engine's fuse-overlayfs a socket
# removed by one boot may come back (one restart in eight or so failed with
# "listen unix /var/run/docker.sock: bind: address already in use"). What
# this tmpfs holds is seen by `docker exec`, not by `docker cp`.
if ! mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run 2>/dev/null; then
	log "cannot mount a tmpfs on /run (no CAP_SYS_ADMIN?); removing stale files instead"
	rm -rf /run/docker /run/docker.pid /run/docker.sock /run/containerd \
		/run/host-ready /run/upstreamd.pid /run/upstreamd.exit
fi
mkdir -p -m 1777 /run/lock

args=(--storage-driver=overlay2 -H unix:///var/run/docker.sock -H tcp://0.0.0.0:2375 --tls=false)
# Inner containers' cgroups go under this container's own cgroup (cgroup v1
# with the machine's /sys/fs/cgroup mounted rw), so they are the host's
# children: the host's limits cover them and the outer engine removes them
# with the host. Without this they would land beside the outer engine's.
# HOST_CGROUP_PARENT overrides it; set it empty to keep dockerd's default.
if [ -z "${HOST_CGROUP_PARENT+set}" ]; then
	own=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ { print $3 }' /proc/self/cgroup)
	if [ -n "$own" ] && [ "$own" != / ] && [ -d "/sys/fs/cgroup/memory$own" ]; then
		HOST_CGROUP_PARENT="$own/engine"
	fi
fi
if [ -n "${HOST_CGROUP_PARENT:-}" ]; then
	args+=(--cgroup-parent="$HOST_CGROUP_PARENT")
fi

dockerd "${args[@]}" "$@" &
dockerd_pid=$!

sup_pid=
shutdown() {
	trap - TERM INT
	if [ -n "$sup_pid" ]; then
		kill "$sup_pid" 2>/dev/null
	fi
	if pid=$(cat /run/upstreamd.pid 2>/dev/null); then
		kill -TERM "$pid" 2>/dev/null
		for _ in $(seq 200); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	kill -TERM "$dockerd_pid" 2>/dev/null
	wait "$dockerd_pid"
	exit $?
}
trap shutdown TERM INT

# Wait for the engine (it takes 1-3 s), unless dockerd died.
until curl -fsS -o /dev/null --unix-socket /var/run/docker.sock http://engine/_ping 2>/dev/null; do
	if ! kill -0 "$dockerd_pid" 2>/dev/null; then
		wait "$dockerd_pid"
		code=$?
		log "dockerd exited with status $code before answering"
		exit "$code"
	fi
	sleep 0.1
done

for tar in /images/*.tar; do
	[ -e "$tar" ] || continue
	stamp="/var/lib/docker/.host-loaded-$(basename "$tar")"
	if [ "$tar" -nt "$stamp" ]; then
		log "loading $tar"
		if docker load -q -i "$tar" >&2; then
			touch "$stamp"
		else
			log "docker load -i $tar failed"
		fi
	fi
done
touch /run/host-ready

supervise() {
	trap - TERM INT
	while :; do
		if [ ! -x /usr/local/bin/upstreamd ]; then
			log "no executable /usr/local/bin/upstreamd; retrying in 2 s"
		else
			/usr/local/bin/upstreamd run > >(tee -a /var/log/upstreamd.log) 2>&1 &
			pid=$!
			echo "$pid" >/run/upstreamd.pid
			wait "$pid"
			code=$?
			echo "$code" >/run/upstreamd.exit
			rm -f /run/upstreamd.pid
			log "upstreamd exited with status $code; restarting in 2 s"
		fi
		sleep 2
	done
}
if [ "${UPSTREAMD_AUTOSTART:-}" = 1 ]; then
	if [ -f "${UPSTREAMD_CONFIG:-}" ]; then
		supervise &
		sup_pid=$!
	else
		log "UPSTREAMD_AUTOSTART=1 but no spec at UPSTREAMD_CONFIG=${UPSTREAMD_CONFIG:-}; not starting upstreamd"
	fi
fi

# `wait` returns early when a trapped signal arrives; the trap then exits.
wait "$dockerd_pid"
code=$?
log "dockerd exited with status $code"
exit "$code"
