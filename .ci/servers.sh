# Sourced by .ci/run: make sure the tests have a Redis and a PostgreSQL to talk to.
#
# The machines run both on their standard ports (Redis 127.0.0.1:6379, PostgreSQL
# 127.0.0.1:5432, trust auth, database `test`). Where one does not answer (a fresh machine),
# start a private one from Debian's packages on a free port, with its data in a temporary
# directory, and point the tests at it (AIMLMUSIC_TEST_REDIS_URL, AIMLMUSIC_TEST_POSTGRES_URL).
# Under CI the tests fail, rather than skip, when a server is missing, so a failure here shows.
# AIMLMUSIC_CI_OWN_SERVERS=1 starts private ones even where the standard ones answer.

_ci_answers() {  # host port: true if something accepts TCP connections there
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

_ci_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_ci_install() {  # Debian packages, when missing and we may install them
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "ci: installing $* from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "ci: cannot install $* (needs root and apt-get); their tests will fail" >&2
    fi
}

_ci_servers_dir=$(mktemp -d /tmp/aimlmusic-ci-servers.XXXXXX)
_ci_cleanup_servers() {
    if [ -n "${_ci_pg_data:-}" ]; then
        runuser -u postgres -- "$_ci_pg_bin/pg_ctl" -D "$_ci_pg_data" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [ -n "${_ci_redis_port:-}" ]; then
        kill "$(cat "$_ci_servers_dir/redis.pid" 2>/dev/null)" 2>/dev/null || true
    fi
    rm -rf "$_ci_servers_dir"
}
trap _ci_cleanup_servers EXIT

if [ -n "${AIMLMUSIC_CI_OWN_SERVERS:-}" ] || ! _ci_answers 127.0.0.1 6379; then
    command -v redis-server >/dev/null 2>&1 || _ci_install redis-server
    _ci_redis_port=$(_ci_free_port)
    redis-server --bind 127.0.0.1 --port "$_ci_redis_port" --save '' --appendonly no \
        --dir "$_ci_servers_dir" --daemonize yes --pidfile "$_ci_servers_dir/redis.pid" >/dev/null
    export AIMLMUSIC_TEST_REDIS_URL="redis://127.0.0.1:$_ci_redis_port/0"
    echo "ci: started a private Redis at $AIMLMUSIC_TEST_REDIS_URL"
fi

if [ -n "${AIMLMUSIC_CI_OWN_SERVERS:-}" ] || ! _ci_answers 127.0.0.1 5432; then
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || _ci_install postgresql
    _ci_pg_bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
    _ci_pg_port=$(_ci_free_port)
    _ci_pg_data="$_ci_servers_dir/pg"
    mkdir -p "$_ci_pg_data"
    chown postgres "$_ci_servers_dir" "$_ci_pg_data"
    runuser -u postgres -- "$_ci_pg_bin/initdb" -D "$_ci_pg_data" -A trust -U postgres >/dev/null
    runuser -u postgres -- "$_ci_pg_bin/pg_ctl" -D "$_ci_pg_data" -l "$_ci_servers_dir/pg.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $_ci_pg_port -k $_ci_servers_dir" start >/dev/null
    runuser -u postgres -- "$_ci_pg_bin/createdb" -h 127.0.0.1 -p "$_ci_pg_port" test
    export AIMLMUSIC_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$_ci_pg_port/test"
    echo "ci: started a private PostgreSQL at $AIMLMUSIC_TEST_POSTGRES_URL"
fi
