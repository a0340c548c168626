#!/usr/bin/env bash
# Entrypoint of the local PostgreSQL image (docker/postgres/Dockerfile).
#
# Follows the contract of the official `postgres` image's entrypoint, so a compose file
# works unchanged with either image:
#   POSTGRES_PASSWORD          superuser password; required on first start unless
#                              POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER              superuser name (default: postgres)
#   POSTGRES_DB                database created on first start (default: $POSTGRES_USER)
#   PGDATA                     data directory (default: /var/lib/postgresql/data)
#   POSTGRES_INITDB_ARGS       extra initdb arguments (e.g. "--locale=C.UTF-8")
#   POSTGRES_INITDB_WALDIR     separate WAL directory
#   POSTGRES_HOST_AUTH_METHOD  pg_hba method for host connections (default: scram-sha-256)
#   <VAR>_FILE                 read POSTGRES_PASSWORD/USER/DB/INITDB_ARGS from a file (secrets)
#   /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz|*.sql.xz|*.sql.zst  run once, on first start
# Started as root, it fixes the ownership of PGDATA and re-executes itself as `postgres`
# (setpriv); the server then replaces this shell (exec), so it is PID 1 and gets the
# stop signal (SIGINT = fast shutdown, see STOPSIGNAL in the Dockerfile).
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; }

# file_env VAR [DEFAULT]: VAR from $VAR or from the file named by $VAR_FILE (not both).
file_env() {
    local var="$1" file_var="${1}_FILE" def="${2:-}" val
    if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
        log "error: both $var and $file_var are set (but are exclusive)"
        exit 1
    fi
    val="$def"
    if [[ -n "${!var:-}" ]]; then
        val="${!var}"
    elif [[ -n "${!file_var:-}" ]]; then
        val="$(< "${!file_var}")"
    fi
    export "$var"="$val"
    unset "$file_var"
}

setup_env() {
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    : "${POSTGRES_HOST_AUTH_METHOD:=}"
    : "${POSTGRES_INITDB_WALDIR:=}"
    export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
    DATABASE_ALREADY_EXISTS=
    if [[ -s "$PGDATA/PG_VERSION" ]]; then
        DATABASE_ALREADY_EXISTS=true
    fi
}

create_db_directories() {
    local user
    user="$(id -u)"
    mkdir -p "$PGDATA"
    chmod 00700 "$PGDATA" || :
    mkdir -p /var/run/postgresql || :
    chmod 03775 /var/run/postgresql || :
    if [[ -n "$POSTGRES_INITDB_WALDIR" ]]; then
        mkdir -p "$POSTGRES_INITDB_WALDIR"
        if [[ "$user" == 0 ]]; then
            find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres '{}' +
        fi
        chmod 700 "$POSTGRES_INITDB_WALDIR"
    fi
    if [[ "$user" == 0 ]]; then
        find "$PGDATA" \! -user postgres -exec chown postgres '{}' +
        find /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
    fi
}

verify_minimum_env() {
    if [[ -z "$POSTGRES_PASSWORD" && "$POSTGRES_HOST_AUTH_METHOD" != trust ]]; then
        cat >&2 <<'EOM'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
       connections without a password. This is *not* recommended.
EOM
        exit 1
    fi
    if [[ "$POSTGRES_HOST_AUTH_METHOD" == trust ]]; then
        log "WARNING: POSTGRES_HOST_AUTH_METHOD=trust: every host may connect as any user without a password"
    fi
}

init_database_dir() {
    local -a args=(--username="$POSTGRES_USER")
    if [[ -n "$POSTGRES_INITDB_WALDIR" ]]; then
        args+=(--waldir="$POSTGRES_INITDB_WALDIR")
    fi
    # POSTGRES_INITDB_ARGS is word-split like in the official image ("--locale=C --data-checksums").
    # The password goes through a pipe (process substitution), never argv or a file.
    # shellcheck disable=SC2086
    if [[ -n "$POSTGRES_PASSWORD" ]]; then
        initdb "${args[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") $POSTGRES_INITDB_ARGS
    else
        initdb "${args[@]}" $POSTGRES_INITDB_ARGS
    fi
}

setup_hba_conf() {
    local method="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    {
        printf '\n'
        if [[ "$method" == trust ]]; then
            printf '# warning trust is enabled for all connections\n'
        fi
        printf 'host all all all %s\n' "$method"
    } >> "$PGDATA/pg_hba.conf"
}

psql_init() {
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

# The official entrypoint's helper, for sourced /docker-entrypoint-initdb.d/*.sh scripts that use it.
docker_process_sql() {
    psql_init --dbname "$POSTGRES_DB" "$@"
}

temp_server_start() {
    # Unix socket only, so nothing outside sees the server before initialisation is done.
    PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -p 5432" start
}

temp_server_stop() {
    PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -m fast -w stop
}

setup_db() {
    local exists
    exists="$(psql_init --dbname postgres --set db="$POSTGRES_DB" --tuples-only \
        <<< "SELECT 1 FROM pg_database WHERE datname = :'db';")"
    if [[ -z "${exists//[[:space:]]/}" ]]; then
        psql_init --dbname postgres --set db="$POSTGRES_DB" <<< 'CREATE DATABASE :"db";'
        log "created database $POSTGRES_DB"
    fi
}

process_init_files() {
    local f
    for f in "$@"; do
        case "$f" in
            *.sh)
                if [[ -x "$f" ]]; then
                    log "running $f"
                    "$f"
                else
                    log "sourcing $f"
                    set +u    # sourced scripts are written for the official entrypoint (no nounset)
                    # shellcheck disable=SC1090
                    . "$f"
                    set -u
                fi
                ;;
            *.sql)     log "running $f"; psql_init --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz)  log "running $f"; gunzip -c "$f" | psql_init --dbname "$POSTGRES_DB" ;;
            *.sql.xz)  log "running $f"; xzcat "$f" | psql_init --dbname "$POSTGRES_DB" ;;
            *.sql.zst) log "running $f"; zstd -dc "$f" | psql_init --dbname "$POSTGRES_DB" ;;
            *)         log "ignoring $f" ;;
        esac
    done
}

main() {
    # `docker run IMAGE -c shared_buffers=256MB` means `postgres -c shared_buffers=256MB`.
    if [[ $# -gt 0 && "${1:0:1}" == '-' ]]; then
        set -- postgres "$@"
    fi
    if [[ $# -eq 0 || "$1" != postgres ]]; then
        exec "$@"    # any other command (bash, psql, pg_isready...) runs as given
    fi
    # `postgres --help/--version/--describe-config` and friends: no initialisation.
    local arg
    for arg in "${@:2}"; do
        case "$arg" in
            -'?'|--help|--describe-config|-V|--version) exec "$@" ;;
        esac
    done

    setup_env
    create_db_directories
    if [[ "$(id -u)" == 0 ]]; then
        export HOME=/var/lib/postgresql USER=postgres LOGNAME=postgres
        exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
    fi

    if [[ -z "$DATABASE_ALREADY_EXISTS" ]]; then
        verify_minimum_env
        log "initialising a new cluster in $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
        init_database_dir
        setup_hba_conf
        export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
        temp_server_start
        setup_db
        shopt -s nullglob
        process_init_files /docker-entrypoint-initdb.d/*
        shopt -u nullglob
        temp_server_stop
        unset PGPASSWORD
        log "PostgreSQL init process complete; ready for start up."
    else
        log "PostgreSQL database directory appears to contain a database; skipping initialisation"
    fi

    exec "$@"
}

main "$@"
