#!/bin/sh
# check-migrate-usage.sh - the built mailmeta-migrate answers --help, refuses
# unknown options with exit 2, and had its install directory substituted.
migrate=${top_builddir:-.}/sql/mailmeta-migrate
[ -x "$migrate" ] || { echo "$migrate not built"; exit 1; }
"$migrate" --help >/dev/null || { echo "--help failed"; exit 1; }
"$migrate" --no-such-option >/dev/null 2>&1
[ $? -eq 2 ] || { echo "unknown option did not exit 2"; exit 1; }
if grep -q '@pkgdatadir@' "$migrate"; then
	echo "@pkgdatadir@ not substituted"; exit 1
fi
exit 0
