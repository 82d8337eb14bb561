#!/bin/sh
# fuzz.sh runs every fuzz target of the module, one after another, each for
# FUZZTIME (default 10m). An optional argument is a regular expression that
# selects targets by name.
#
#   ./test/e2e/fuzz.sh                      # every target, 10 minutes each
#   FUZZTIME=30s ./test/e2e/fuzz.sh         # a quick pass
#   ./test/e2e/fuzz.sh 'Body$'              # only kvapprovals' *Body targets
#
# A failing input is written to <package>/testdata/fuzz/<target>/ by go test;
# the script goes on with the next target and exits 1 at the end. Committed
# reproducers in testdata fail the target at once until the bug is fixed.
set -u
cd "$(dirname "$0")/../.." || exit 2
FUZZTIME=${FUZZTIME:-10m}
# Minimizing a new input may take up to 60s by default, during which the
# worker stalls; a shorter bound keeps the fuzzer exploring.
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-10s}
filter=${1:-.}
status=0
for dir in $(grep -rlE --include='*_test.go' '^func Fuzz' pkg cmd internal 2>/dev/null | xargs -n1 dirname | sort -u); do
	for target in $(grep -hoE '^func Fuzz[A-Za-z0-9_]+' "$dir"/*_test.go | sed 's/^func //' | sort -u); do
		echo "$target" | grep -qE -- "$filter" || continue
		echo "== ./$dir $target for $FUZZTIME"
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" "./$dir"; then
			echo "!! ./$dir $target failed; failing inputs are in $dir/testdata/fuzz/$target/"
			status=1
		fi
	done
done
exit $status
