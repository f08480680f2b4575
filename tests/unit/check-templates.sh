#!/bin/sh
# check-templates.sh - every @@NAME@@ placeholder used by a shipped or stack
# template is one that scripts/stack renders and README documents for
# people installing by hand.
top=${top_srcdir:-.}
status=0
names=$(cat "$top"/conf/postfix/* "$top"/conf/dovecot/* "$top"/scripts/stack.d/* |
	grep -o '@@[A-Z_]*@@' | sort -u)
[ -n "$names" ] || { echo "no placeholders found: wrong top_srcdir?"; exit 1; }
for name in $names; do
	if ! grep -q "s|$name|" "$top/scripts/stack"; then
		echo "scripts/stack does not render $name"
		status=1
	fi
done
for name in $(cat "$top"/conf/postfix/* "$top"/conf/dovecot/* | grep -o '@@[A-Z_]*@@' | sort -u); do
	if ! grep -q "$name" "$top/README.md"; then
		echo "README.md does not explain $name"
		status=1
	fi
done
exit $status
