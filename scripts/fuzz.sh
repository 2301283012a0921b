#!/bin/sh
# Fuzzes each wire parser for FUZZTIME (a duration, or Nx for N execs), then
# keeps the corpus the fuzzer grew in the build cache under the package's
# testdata/fuzz/<Target>/, where `go test` (make test) replays it.
# Usage: scripts/fuzz.sh [Target...]   (default: every target below)
# Coverage counters go into this module's packages only (fuzz-toolexec.sh),
# built in their own cache, FUZZCACHE (the first build takes ~2 min).
set -eu
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-60s}
# Go minimizes each new interesting input for up to 60 s by default, during
# which the target makes no progress: FuzzHeapTuples, whose inputs are 8 KiB
# pages, spent minutes at 0 execs/s finding coverage. A bounded number of
# minimization runs keeps it moving (the corpus keeps the input either way).
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-2000x}
GOCACHE=${FUZZCACHE:-$HOME/.cache/neonproxy/fuzz-gocache}
export GOCACHE
here=$(cd "$(dirname "$0")" && pwd)
TARGETS="internal/pgwire:FuzzReadStartup internal/pgwire:FuzzFramer router:FuzzStripEndpoint
proxy:FuzzMsgReader proxy:FuzzSCRAMExchange proxy:FuzzParseConsole proxy:FuzzClientMessages
pagestore:FuzzDecodeIngest pagestore:FuzzDecodeMaterialize pagestore:FuzzDecodeSparse
pagestore:FuzzDecodeKey pagestore:FuzzParseControlData pagestore:FuzzHeapTuples walkeeper:FuzzValidEnd"
module=$($GO list -m)
cache=$($GO env GOCACHE)/fuzz
for t in $TARGETS; do
	pkg=${t%%:*} name=${t##*:}
	if [ $# -gt 0 ] && ! echo " $* " | grep -q " $name "; then continue; fi
	echo "== $name ($pkg, $FUZZTIME)"
	$GO test -toolexec "$here/fuzz-toolexec.sh" "./$pkg" -run '^$' -fuzz "^$name\$" -fuzztime "$FUZZTIME" \
		-fuzzminimizetime "$FUZZMINIMIZETIME"
	if [ -d "$cache/$module/$pkg/$name" ]; then
		mkdir -p "$pkg/testdata/fuzz/$name"
		cp -n "$cache/$module/$pkg/$name"/* "$pkg/testdata/fuzz/$name/" 2>/dev/null || true
	fi
done
