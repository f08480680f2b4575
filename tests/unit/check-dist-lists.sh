#!/bin/sh
# check-dist-lists.sh - every migration and configuration template in the
# source tree is listed in Makefile.am, so `make install` and the release
# tarball never silently miss one (automake has no wildcards).
top=${top_srcdir:-.}
status=0
for f in "$top"/sql/migrations/*.sql "$top"/conf/postfix/* "$top"/conf/dovecot/*; do
	rel=${f#"$top"/}
	if ! grep -q "^[[:space:]]*$rel\( \\\\\)\{0,1\}$" "$top/Makefile.am"; then
		echo "not listed in Makefile.am: $rel"
		status=1
	fi
done
exit $status
