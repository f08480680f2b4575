#!/usr/bin/env bash
# configure-missing.sh - configure stops with the Debian package to install
# when a dependency is missing.  Each case hides one dependency (a pkg-config
# search path without its .pc file, a cache variable saying a header is
# absent, a directory that does not exist) and checks the message.  TAP output.
set -u
src=$(cd "$(dirname "$0")/../.." && pwd)
[ -x "$src/configure" ] || { echo "1..0 # SKIP no configure script: run autoreconf -fi"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A pkg-config directory holding every installed .pc file but $1.
pc_dir_without() {
	local dir=$work/pc-without-$1 pc
	mkdir -p "$dir"
	for pc in $(pkg-config --variable pc_path pkg-config | tr : ' '); do
		[ -d "$pc" ] && find "$pc" -maxdepth 1 -name '*.pc' ! -name "$1.pc" \
			-exec ln -sf {} "$dir/" \;
	done
	echo "$dir"
}

n=0 failed=0
expect() {	# expect DESCRIPTION PACKAGE ENV... -- CONFIGURE-ARGS...
	local what=$1 package=$2 envs=() out rc
	shift 2
	while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
	shift
	n=$((n + 1))
	rm -rf "$work/build" && mkdir "$work/build"
	out=$(cd "$work/build" && env "${envs[@]}" "$src/configure" -q "$@" 2>&1)
	rc=$?
	if [ $rc -ne 0 ] && grep -q "apt-get install .*$package" <<<"$out"; then
		echo "ok $n - $what names $package"
	else
		echo "not ok $n - $what names $package (exit $rc)"
		sed 's/^/# /' <<<"$out" | tail -n 5
		failed=$((failed + 1))
	fi
}

echo "1..7"
expect "missing libpq" libpq-dev PKG_CONFIG_LIBDIR="$(pc_dir_without libpq)" --
expect "missing OpenSSL" libssl-dev PKG_CONFIG_LIBDIR="$(pc_dir_without libcrypto)" --
expect "missing GMime 3" libgmime-3.0-dev PKG_CONFIG_LIBDIR="$(pc_dir_without gmime-3.0)" --
expect "missing jansson" libjansson-dev PKG_CONFIG_LIBDIR="$(pc_dir_without jansson)" --
expect "missing libmilter" libmilter-dev ac_cv_header_libmilter_mfapi_h=no --
expect "missing Dovecot" dovecot-dev X=1 -- --with-dovecot="$work/no-dovecot"
expect "missing Pigeonhole" dovecot-sieve X=1 -- --with-pigeonhole="$work/no-sieve"
[ $failed -eq 0 ]
