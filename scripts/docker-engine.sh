#!/usr/bin/env bash
# Makes a Docker engine answer on this machine, and the offline test image the `docker` sandbox
# backend's tests use. Idempotent: does nothing that is already done. Needs root for the install
# and to start dockerd. Prints what it does to stderr.
#
#   scripts/docker-engine.sh            # engine + autoresearch-sandbox:test
#   DOCKER_TEST_IMAGE=name:tag scripts/docker-engine.sh
#
# No image can be pulled on these machines: the test image is an empty root (a few empty dirs)
# made with `docker import`; the job's system files come from read-only bind mounts of host paths.
set -euo pipefail

IMAGE="${DOCKER_TEST_IMAGE:-autoresearch-sandbox:test}"
LOG=/tmp/dockerd.log
say() { echo "docker-engine: $*" >&2; }

engine_up() { docker info >/dev/null 2>&1; }

wait_engine() {
    local deadline=$((SECONDS + 60))
    until engine_up; do
        if ((SECONDS >= deadline)); then return 1; fi
        sleep 0.5
    done
}

make_image() {
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then
        say "image $IMAGE present"
        return 0
    fi
    say "building $IMAGE (empty root, docker import)"
    local tmp
    tmp=$(mktemp -d)
    mkdir -p "$tmp/root"/{tmp,proc,dev,sys,etc,run,var,home,root}
    chmod 1777 "$tmp/root/tmp"
    tar -C "$tmp/root" --numeric-owner --owner=0 --group=0 -cf "$tmp/root.tar" .
    local rc=0
    docker import -c 'CMD ["/bin/sh"]' "$tmp/root.tar" "$IMAGE" >/dev/null || rc=$?
    rm -rf "$tmp"
    return $rc
}

# A container from the test image must run (binding the host's /bin, /lib, /usr, as the backend does).
probe() {
    local binds=() out p
    for p in /usr /bin /sbin /lib /lib32 /lib64; do
        [[ -e "$p" ]] && binds+=(-v "$p:$p:ro")
    done
    out=$(docker run --rm --network none --read-only "${binds[@]}" "$IMAGE" /bin/sh -c 'echo ok' 2>&1) \
        && [[ "$out" == ok ]] && return 0
    say "probe container failed: $out"
    return 1
}

if engine_up; then
    say "engine already answering"
    make_image
    probe
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    say "dockerd missing: installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends docker.io >&2
fi
command -v docker >/dev/null 2>&1 || { say "no docker CLI after install"; exit 1; }

# Flag sets, most capable first. Containers without networking need no bridge or iptables (often
# not allowed inside these machines); overlayfs does not work on every host file system (then vfs).
for flags in \
    "--iptables=false --ip-forward=false --bridge=none" \
    "--iptables=false --ip-forward=false --bridge=none --storage-driver=vfs"; do
    say "starting dockerd $flags (log: $LOG)"
    # shellcheck disable=SC2086
    setsid nohup dockerd $flags >"$LOG" 2>&1 </dev/null &
    pid=$!
    if wait_engine && make_image && probe; then
        say "engine up (pid $pid) with: $flags"
        exit 0
    fi
    say "dockerd $flags not usable; tail of $LOG:"
    tail -n 20 "$LOG" >&2 || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f /var/run/docker.pid
done
say "could not start a usable dockerd"
exit 1
