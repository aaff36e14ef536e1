#!/usr/bin/env bash
# PostgreSQL from Debian for the store tests (and for trying the PostgreSQL store by hand).
#
#   scripts/ci-postgres.sh           install the server binaries if missing (idempotent, quick when
#                                    installed). The tests then start their own throwaway cluster
#                                    (tests/postgres.py): nothing else is needed.
#   scripts/ci-postgres.sh --start   also start Debian's system cluster, create the role and the
#                                    database "hfs_cds" (CREATEDB, so tests may make their own), and
#                                    print its URL on stdout, e.g. for
#                                    export CDS_TEST_DATABASE_URL="$(scripts/ci-postgres.sh --start)"
#
# Needs root (apt-get, pg_ctlcluster), as on CI and the project's machines. Messages go to stderr.
set -euo pipefail

ROLE=hfs_cds
PASSWORD=hfs_cds
DATABASE=hfs_cds

log() { echo "ci-postgres: $*" >&2; }

newest_version() {
    find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null \
        | awk -F/ '{print $5}' | sort -n | tail -1
}

version="$(newest_version || true)"
if [[ -z "$version" ]]; then
    log "installing PostgreSQL from Debian"
    export DEBIAN_FRONTEND=noninteractive
    # Another install may hold the dpkg lock for a while: wait for it rather than fail.
    apt-get -o DPkg::Lock::Timeout=600 update -q >&2
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends postgresql >&2
    version="$(newest_version || true)"
    if [[ -z "$version" ]]; then
        log "PostgreSQL was installed but no initdb was found under /usr/lib/postgresql"
        exit 1
    fi
fi
log "PostgreSQL $version server binaries: /usr/lib/postgresql/$version/bin"

if [[ "${1:-}" != "--start" ]]; then
    exit 0
fi

if ! pg_lsclusters -h 2>/dev/null | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
    log "creating cluster $version/main"
    pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
    log "starting cluster $version/main"
    pg_ctlcluster "$version" main start >&2
fi
port="$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')"
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
done
pg_isready -h 127.0.0.1 -p "$port" >&2

psql_admin() { runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -qtA "$@"; }
if [[ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]]; then
    log "creating role $ROLE"
    psql_admin -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'" >&2
fi
if [[ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != 1 ]]; then
    log "creating database $DATABASE"
    psql_admin -c "CREATE DATABASE $DATABASE OWNER $ROLE" >&2
fi
echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:$port/$DATABASE"
