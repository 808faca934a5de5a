#!/bin/sh
# Entrypoint of the IntelliLog-AI images (build/docker/Dockerfile, Dockerfile.gpu).
#
#   (no arguments)    intellilog serve on $INTELLILOG_HOST:$INTELLILOG_PORT with
#                     $INTELLILOG_WORKERS worker processes (default: the CPUs this
#                     container may use, CFS quota included, so a pod limited to 2 CPUs
#                     on a 64-core node runs 2 workers, not 64)
#   COMMAND [ARGS]    runs that command instead, e.g. `intellilog retrain ...` (the
#                     retraining CronJob) or `intellilog models list`
#
# Either way, when DATABASE_URL is PostgreSQL it first waits up to $DATABASE_WAIT_S
# seconds (default 60; 0 = no wait) for the database to accept a connection
# (wait_for_db.py), so that a server started beside its database does not begin by
# spooling, and then exits with one line naming the host when it never does.
# The command is exec'ed: it becomes this process, and SIGTERM from the container
# runtime reaches the server itself (it finishes in-flight requests, then exits).
#
# Caches (compiled once, then loaded in milliseconds): the numba kernels'
# ($NUMBA_CACHE_DIR) and the compiled forests' ($INTELLILOG_CACHE_DIR) folders are
# created here; the image points both into the /var/cache/intellilog volume.
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
python=${INTELLILOG_PYTHON:-python3}

die() {
    echo "error: $*" >&2
    exit 2
}

# A whole number >= 1, or die naming the variable.
positive_int() {
    case $2 in
        '' | *[!0-9]* | 0 | 0*) die "$1='$2': expected a whole number >= 1" ;;
    esac
}

# CPUs this process may use: the affinity mask (nproc, which would also obey
# OMP_NUM_THREADS, a LightGBM setting, hence env -u), capped by a cgroup v2 or v1 CPU
# quota rounded up (a limit of 1.5 CPUs gives 2 workers).
cpu_count() {
    n=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null \
        || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
    quota=0
    period=0
    if [ -r /sys/fs/cgroup/cpu.max ]; then
        read -r quota period </sys/fs/cgroup/cpu.max || true
        [ "$quota" = max ] && quota=0
    elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ] && [ -r /sys/fs/cgroup/cpu/cpu.cfs_period_us ]; then
        quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
        period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
    fi
    if [ "${quota:-0}" -gt 0 ] 2>/dev/null && [ "${period:-0}" -gt 0 ]; then
        limit=$(((quota + period - 1) / period))
        [ "$limit" -lt "$n" ] && n=$limit
    fi
    [ "$n" -ge 1 ] || n=1
    echo "$n"
}

# Create a cache folder named by $1 (a variable name); unset the variable when the
# folder cannot be written, so the tool falls back to its own default instead of failing.
prepare_cache() {
    eval "dir=\${$1:-}"
    [ -n "$dir" ] || return 0
    if mkdir -p "$dir" 2>/dev/null && [ -w "$dir" ]; then
        return 0
    fi
    echo "warning: $1=$dir is not writable: that cache is off, so every start compiles again" >&2
    unset "$1"
}

prepare_cache NUMBA_CACHE_DIR
prepare_cache INTELLILOG_CACHE_DIR

wait_s=${DATABASE_WAIT_S:-60}
case $wait_s in
    '' | *[!0-9]*) die "DATABASE_WAIT_S='$wait_s': expected whole seconds >= 0 (0 = do not wait)" ;;
esac
case ${DATABASE_URL:-} in
    postgresql://* | postgres://*)
        if [ "$wait_s" -gt 0 ]; then
            "$python" "$here/wait_for_db.py" --timeout "$wait_s" || exit $?
        fi
        ;;
esac

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

host=${INTELLILOG_HOST:-0.0.0.0}
port=${INTELLILOG_PORT:-8000}
positive_int INTELLILOG_PORT "$port"
[ "$port" -le 65535 ] || die "INTELLILOG_PORT='$port': a TCP port within [1, 65535]"
workers=${INTELLILOG_WORKERS:-$(cpu_count)}
positive_int INTELLILOG_WORKERS "$workers"

exec intellilog serve --host "$host" --port "$port" --workers "$workers"
