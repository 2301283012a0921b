#!/bin/sh
# go test -toolexec wrapper used by scripts/fuzz.sh. When fuzzing, the go
# command builds every package of the test binary with coverage counters
# (-d=libfuzzer): pebble, pgx, zap and the standard library too, and each
# exec then pays for all their counters. In pagestore and proxy that made
# 3k execs/s where internal/pgwire, with few imports, made 26k. Coverage
# outside this module never guides a mutation towards our parsers' branches,
# so the flag is kept for this module's packages only (pagestore: 42k/s).
# `compile -V=full` (the build-cache key of the tool) passes through, so
# fuzz.sh gives the wrapped builds their own GOCACHE.
tool=$1
shift
case "$tool" in
*/compile) ;;
*) exec "$tool" "$@" ;;
esac
module=${FUZZ_MODULE:-github.com/neonproxy/neonproxy}
pkg= prev=
for a in "$@"; do
	[ "$prev" = "-p" ] && pkg=$a
	prev=$a
done
case "$pkg" in
"$module" | "$module"/*) exec "$tool" "$@" ;;
esac
for a in "$@"; do
	shift
	[ "$a" = "-d=libfuzzer" ] || set -- "$@" "$a"
done
exec "$tool" "$@"
