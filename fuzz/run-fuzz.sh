#!/bin/sh
# run-fuzz.sh - build the extractor's libFuzzer target and run it
#
# usage: fuzz/run-fuzz.sh [SECONDS]     (default 300)
# Builds fuzz-extract with clang's fuzzer, AddressSanitizer and
# UndefinedBehaviorSanitizer, seeds a scratch corpus with the messages of
# the public test corpora (MAILMETA_CORPORA, default ../shared/corpora
# beside the source tree) and fuzzes for SECONDS.  Crashes are written to
# the work directory it prints (FUZZ_WORKDIR to choose one); nothing is
# written to the source tree.
set -eu
secs=${1:-300}
top=$(cd "$(dirname "$0")/.." && pwd)
corpora=${MAILMETA_CORPORA:-$top/../shared/corpora}
work=${FUZZ_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/mailmeta-fuzz.XXXXXX")}
mkdir -p "$work/corpus" "$work/crashes"

flags=$(pkg-config --cflags --libs gmime-3.0 jansson libcrypto)
# shellcheck disable=SC2086
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-I"$top/libmailmeta" -o "$work/fuzz-extract" "$top/fuzz/fuzz-extract.c" \
	"$top"/libmailmeta/mm-extract.c "$top"/libmailmeta/mm-headers.c \
	"$top"/libmailmeta/mm-parts.c "$top"/libmailmeta/mm-hash-stream.c $flags

if [ -d "$corpora" ]; then
	n=0
	find "$corpora" -type f \( -name '*.eml' -o -name '*.msg' -o -name '*.txt' \
		-o -name '*.mbox' -o -name '*.mime' \) -size -1000k | while read -r f; do
		n=$((n + 1))
		# first byte: the chunk size selector the target reads
		{ printf 'A'; cat "$f"; } > "$work/corpus/seed-$n"
	done
else
	echo "no corpora at $corpora: starting from an empty corpus" >&2
fi

echo "fuzzing for ${secs}s in $work"
# GMime's parser may allocate a lot on hostile input; cap at 2 GB.  Full
# malloc stacks let the suppression file name GMime's one-time leak.
LSAN_OPTIONS=suppressions=$top/fuzz/lsan.supp \
ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:fast_unwind_on_malloc=0 \
	"$work/fuzz-extract" -max_total_time="$secs" -rss_limit_mb=2048 \
	-max_len=262144 -timeout=20 -print_final_stats=1 \
	-artifact_prefix="$work/crashes/" "$work/corpus"
