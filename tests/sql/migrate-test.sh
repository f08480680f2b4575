#!/bin/bash
# migrate-test.sh — tests mailmeta-migrate, the schema migration runner.
#
# Proves that migrations are safe to run on a live database: a fresh apply
# works; running again is a no-op; upgrading from every earlier version ends
# in exactly the schema of a fresh apply; a failing migration leaves the
# database as it was; an edited applied migration, a malformed file name, a
# duplicate version, a non-superuser and a bad option are refused; two
# concurrent runs serialise.
#
# Needs the libpq environment (PGHOST, PGPORT, PGUSER, ...) of a superuser
# connection; creates and drops its own scratch databases. Output is TAP, so
#   prove tests/sql/migrate-test.sh
# runs it. MAILMETA_MIGRATE may name the installed runner; by default the
# source sql/mailmeta-migrate.in runs with --dir sql/migrations.

set -u

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
migrations=${MAILMETA_MIGRATIONS:-$top/sql/migrations}
runner=${MAILMETA_MIGRATE:-$top/sql/mailmeta-migrate.in}

work=$(mktemp -d "${TMPDIR:-/tmp}/mailmeta-migrate-test.XXXXXX")
prefix="mailmeta_migrate_test_$$"
n=0
failed=0

cleanup() {
    # new_db runs in command substitutions, so find its databases by name.
    psql -X -At -d postgres -c \
        "SELECT datname FROM pg_database WHERE datname LIKE '${prefix}\\_%'" 2>/dev/null |
    while read -r db; do
        dropdb --if-exists "$db" >/dev/null 2>&1
    done
    rm -rf "$work"
}
trap cleanup EXIT

ok() {  # ok CONDITION-STATUS DESCRIPTION
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then
        echo "ok $n - $2"
    else
        echo "not ok $n - $2"
        failed=$((failed + 1))
    fi
}

diag_file() {
    sed 's/^/# /' "$1"
}

new_db() {  # new_db NAME-SUFFIX -> echoes the database name
    local db="${prefix}_$1"
    dropdb --if-exists "$db" >/dev/null 2>&1
    createdb "$db" || { echo "Bail out! cannot create database $db"; exit 1; }
    echo "$db"
}

migrate() {  # migrate DB LOG [ARGS...]: runs the runner on DB, output to LOG
    local db=$1 log=$2
    shift 2
    PGDATABASE=$db sh "$runner" --dir "$migrations" "$@" >"$log" 2>&1
}

migrate_dir() {  # migrate_dir DB DIR LOG [ARGS...]
    local db=$1 dir=$2 log=$3
    shift 3
    PGDATABASE=$db sh "$runner" --dir "$dir" "$@" >"$log" 2>&1
}

# The schema, without lines that differ between otherwise equal dumps.
schema_dump() {
    pg_dump --schema-only "$1" 2>/dev/null |
        grep -Ev '^(-- Dumped (from|by)|\\restrict|\\unrestrict)'
}

# Schema and data: "unchanged" means this is byte-identical.
full_dump() {
    pg_dump "$1" 2>/dev/null | grep -Ev '^(-- Dumped (from|by)|\\restrict|\\unrestrict)'
}

q() {  # q DB SQL: one value
    psql -X -At -d "$1" -c "$2" 2>/dev/null
}

ls "$migrations"/[0-9][0-9][0-9][0-9]_*.sql >/dev/null 2>&1 ||
    { echo "Bail out! no migrations in $migrations"; exit 1; }
files=()
for f in "$migrations"/[0-9][0-9][0-9][0-9]_*.sql; do files+=("$(basename "$f")"); done
count=${#files[@]}
latest=$((10#${files[$((count - 1))]%%_*}))
psql -X -At -d postgres -c 'SELECT 1' >/dev/null 2>&1 ||
    { echo "Bail out! cannot connect to PostgreSQL (set PGHOST, PGPORT, PGUSER)"; exit 1; }

# ------------------------------------------------------------ fresh apply
fresh=$(new_db fresh)
migrate "$fresh" "$work/fresh.log"; rc=$?
ok $rc "fresh apply succeeds"
[ $rc -eq 0 ] || diag_file "$work/fresh.log"
[ "$(grep -c '^mailmeta-migrate: applying ' "$work/fresh.log")" -eq "$count" ]
ok $? "fresh apply prints one line per migration ($count)"
[ "$(q "$fresh" 'SELECT count(*) FROM mail.schema_migrations')" -eq "$count" ] &&
[ "$(q "$fresh" 'SELECT max(version) FROM mail.schema_migrations')" -eq "$latest" ]
ok $? "schema_migrations records every migration, up to version $latest"
[ "$(q "$fresh" "SELECT string_agg(name, ' ' ORDER BY version) FROM mail.schema_migrations")" = "${files[*]}" ]
ok $? "schema_migrations records the file names in order"
[ "$(q "$fresh" "SELECT sha256 FROM mail.schema_migrations WHERE version = 1")" = \
  "$(sha256sum < "$migrations/${files[0]}" | cut -d' ' -f1)" ]
ok $? "schema_migrations records each file's sha256"
schema_dump "$fresh" >"$work/fresh.schema"
full_dump "$fresh" >"$work/fresh.full"
[ -s "$work/fresh.schema" ] && grep -q 'CREATE FUNCTION mail.add_user' "$work/fresh.schema"
ok $? "the fresh schema can be dumped"

# ------------------------------------------------------------ re-run
migrate "$fresh" "$work/rerun.log"; rc=$?
ok $rc "re-run succeeds"
grep -q 'nothing pending' "$work/rerun.log" && ! grep -q 'applying' "$work/rerun.log"
ok $? "re-run says nothing was pending and applies nothing"
full_dump "$fresh" >"$work/rerun.full"
cmp -s "$work/fresh.full" "$work/rerun.full"
ok $? "re-run changes nothing (schema and schema_migrations identical)"

PGDATABASE=$fresh sh "$runner" --dir "$migrations" --status >"$work/status.log" 2>&1
[ "$(grep -c '^applied ' "$work/status.log")" -eq "$count" ] && ! grep -q '^pending' "$work/status.log"
ok $? "--status lists every migration as applied"

# ------------------------------------------------------------ upgrades
for ((k = 1; k < latest; k++)); do
    # only versions that exist as files (numbering may have gaps)
    ls "$migrations/$(printf '%04d' "$k")"_*.sql >/dev/null 2>&1 || continue
    db=$(new_db "from_$k")
    migrate "$db" "$work/to_$k.log" --to "$k"; rc=$?
    [ $rc -eq 0 ] && [ "$(q "$db" 'SELECT max(version) FROM mail.schema_migrations')" -eq "$k" ]
    ok $? "--to $k applies migrations up to version $k only"
    [ $rc -eq 0 ] || diag_file "$work/to_$k.log"
    PGDATABASE=$db sh "$runner" --dir "$migrations" --status >"$work/status_$k.log" 2>&1
    [ "$(grep -c '^pending ' "$work/status_$k.log")" -gt 0 ]
    ok $? "--status at version $k lists pending migrations"
    migrate "$db" "$work/up_$k.log"; rc=$?
    schema_dump "$db" >"$work/up_$k.schema"
    [ $rc -eq 0 ] && diff -u "$work/fresh.schema" "$work/up_$k.schema" >"$work/up_$k.diff"
    ok $? "upgrade from version $k gives the same schema as a fresh apply"
    [ -s "$work/up_$k.diff" ] && head -40 "$work/up_$k.diff" | sed 's/^/# /'
    [ $rc -eq 0 ] || diag_file "$work/up_$k.log"
done

# ------------------------------------------------------------ broken migration
broken_dir="$work/broken"
mkdir "$broken_dir"
cp "$migrations"/*.sql "$broken_dir"/
cat >"$broken_dir/9999_broken.sql" <<'SQL'
-- A migration that does some work and then fails.
CREATE TABLE mail.broken_marker (x int);
INSERT INTO mail.broken_marker VALUES (1);
SELECT 1 / 0;
SQL
migrate_dir "$fresh" "$broken_dir" "$work/broken.log"; rc=$?
[ $rc -ne 0 ]
ok $? "a failing migration makes the runner exit non-zero"
grep -q 'division by zero' "$work/broken.log"
ok $? "the failure reports the database error"
[ "$(q "$fresh" "SELECT to_regclass('mail.broken_marker') IS NULL")" = t ]
ok $? "the failed migration's table is gone"
[ "$(q "$fresh" 'SELECT count(*) FROM mail.schema_migrations WHERE version = 9999')" -eq 0 ]
ok $? "the failed migration is not recorded"
full_dump "$fresh" >"$work/broken.full"
cmp -s "$work/fresh.full" "$work/broken.full"
ok $? "the database is exactly as before the failed run"

empty=$(new_db broken_fresh)
full_dump "$empty" >"$work/empty.full"
migrate_dir "$empty" "$broken_dir" "$work/broken_fresh.log"; rc=$?
full_dump "$empty" >"$work/empty_after.full"
[ $rc -ne 0 ] && cmp -s "$work/empty.full" "$work/empty_after.full" &&
[ "$(q "$empty" "SELECT count(*) FROM pg_namespace WHERE nspname = 'mail'")" -eq 0 ]
ok $? "all pending migrations are one transaction: a failure in the last leaves an empty database empty"

# ------------------------------------------------------------ edited migration
changed_dir="$work/changed"
mkdir "$changed_dir"
cp "$migrations"/*.sql "$changed_dir"/
echo "-- edited after it was applied" >>"$changed_dir/${files[0]}"
migrate_dir "$fresh" "$changed_dir" "$work/changed.log"; rc=$?
[ $rc -ne 0 ] && grep -q "migration ${files[0]} differs from the one applied" "$work/changed.log"
ok $? "an applied migration that was edited is refused"
full_dump "$fresh" >"$work/changed.full"
cmp -s "$work/fresh.full" "$work/changed.full"
ok $? "the refused run changes nothing"

# ------------------------------------------------------------ bad directories
bad_dir="$work/badname"
mkdir "$bad_dir"
cp "$migrations"/*.sql "$bad_dir"/
echo 'SELECT 1;' >"$bad_dir/0099-Bad-Name.sql"
migrate_dir "$fresh" "$bad_dir" "$work/badname.log"; rc=$?
[ $rc -ne 0 ] && grep -q "bad migration file name '0099-Bad-Name.sql'" "$work/badname.log"
ok $? "a malformed migration file name is refused"

dup_dir="$work/dup"
mkdir "$dup_dir"
cp "$migrations"/*.sql "$dup_dir"/
echo 'SELECT 1;' >"$dup_dir/$(printf '%04d' "$latest")_another.sql"
migrate_dir "$fresh" "$dup_dir" "$work/dup.log"; rc=$?
[ $rc -ne 0 ] && grep -q "two migrations with version" "$work/dup.log"
ok $? "two migrations with the same version are refused"

txn_dir="$work/txn"
mkdir "$txn_dir"
cp "$migrations"/*.sql "$txn_dir"/
printf 'CREATE TABLE mail.t (x int);\nCOMMIT;\n' >"$txn_dir/9998_commits.sql"
migrate_dir "$fresh" "$txn_dir" "$work/txn.log"; rc=$?
[ $rc -ne 0 ] && grep -q "must not contain BEGIN/COMMIT/ROLLBACK" "$work/txn.log"
ok $? "a migration with its own COMMIT is refused"

migrate_dir "$fresh" "$work/does-not-exist" "$work/nodir.log"; rc=$?
[ $rc -ne 0 ]
ok $? "a missing migrations directory is refused"

PGDATABASE=$fresh sh "$runner" --bogus >"$work/usage.log" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q '^Usage:' "$work/usage.log"
ok $? "an unknown option exits 2 with the usage"

migrate "$fresh" "$work/to_bad.log" --to abc; rc=$?
[ $rc -eq 2 ]
ok $? "--to with a non-number exits 2"

sh "$runner" --help >"$work/help.log" 2>&1; rc=$?
[ $rc -eq 0 ] && grep -q 'superuser' "$work/help.log"
ok $? "--help exits 0 and says a superuser is needed"

# ------------------------------------------------------------ non-superuser
PGOPTIONS='-c role=mailmeta_admin' migrate "$fresh" "$work/nonsuper.log"; rc=$?
[ $rc -ne 0 ] && grep -q 'must connect as a superuser' "$work/nonsuper.log"
ok $? "a non-superuser connection is refused"

# ------------------------------------------------------------ concurrency
conc=$(new_db concurrent)
migrate "$conc" "$work/conc1.log" & p1=$!
migrate "$conc" "$work/conc2.log" & p2=$!
wait $p1; rc1=$?
wait $p2; rc2=$?
[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ]
ok $? "two concurrent runs both succeed"
applied=$(cat "$work/conc1.log" "$work/conc2.log" | grep -c '^mailmeta-migrate: applying ')
[ "$applied" -eq "$count" ] && [ "$(q "$conc" 'SELECT count(*) FROM mail.schema_migrations')" -eq "$count" ]
ok $? "concurrent runs serialise: each migration is applied once"
schema_dump "$conc" >"$work/conc.schema"
cmp -s "$work/fresh.schema" "$work/conc.schema"
ok $? "the concurrently migrated schema equals a fresh apply"

echo "1..$n"
[ "$failed" -eq 0 ]
