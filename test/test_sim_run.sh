#!/bin/sh
# SPDX-License-Identifier: MIT
# test_sim_run.sh: the simulation runner (build/tools/keel-sim, `make sim`)
# as `make test` sees it: every scenario passes a few seeds, each run twice
# with the same trace hash (determinism); every seed of the regression
# list (sim/scenarios/seeds.txt: seeds that once found a defect) passes;
# a few seeds under injected faults (--fault-mix) pass, twice alike; one
# seed replays with its trace written, and keel-trace reads that trace;
# --list names every scenario; bad arguments give exit 2.
# Builds nothing: runs $BUILD/tools/keel-sim (BUILD defaults to build).
# Last line: "sim-run: N passed, M failed"; exit status 1 on any failure.
set -u
BUILD=${BUILD:-build}
sim=$BUILD/tools/keel-sim
SUITE=sim-run
. test/helpers/checks.sh

if [ ! -x "$sim" ]; then
	bad "$sim is needed (run make first)"
	finish
fi

scenarios=$("$sim" --list | awk '{ print $1 }')
check "--list names the eight scenarios" \
	test "$(echo "$scenarios" | wc -l)" -eq 8

for sc in $scenarios; do
	if "$sim" --scenario "$sc" --from 1 --seeds 5 --recheck 1 \
		>"$dir/$sc.log" 2>&1; then
		ok "$sc: 5 seeds, each run twice to the same trace hash"
	else
		bad "$sc: 5 seeds, each run twice to the same trace hash"
		grep -v '^sim:' "$dir/$sc.log" | head -5
	fi
done

# Under injected faults (a spec per seed): errors are outcomes, the
# invariants and determinism still hold.
for sc in $scenarios; do
	if "$sim" --scenario "$sc" --from 1 --seeds 6 --recheck 1 \
		--fault-mix >"$dir/$sc-faults.log" 2>&1; then
		ok "$sc: 6 seeds under faults, each run twice to the same hash"
	else
		bad "$sc: 6 seeds under faults, each run twice to the same hash"
		grep -v '^sim:' "$dir/$sc-faults.log" | head -5
	fi
done

# The regression list: "scenario seed [--fault-mix] # what it found".
while read -r sc seed rest; do
	case $sc in '' | '#'*) continue ;; esac
	mix=
	case $rest in --fault-mix*) mix=--fault-mix ;; esac
	check "regression: $sc seed $seed ($rest)" \
		"$sim" --scenario "$sc" --seed "$seed" --recheck 1 $mix \
		>"$dir/regress.log" 2>&1
done <sim/scenarios/seeds.txt

# A replay writes the seed's trace, and keel-trace reads it.
check "--seed with --trace writes the seed's trace" \
	"$sim" --scenario proxy --seed 7 --trace "$dir/proxy-7.trace"
if "$BUILD/tools/keel-trace" summary "$dir/proxy-7.trace" \
	>"$dir/summary.txt" 2>&1; then
	ok "keel-trace reads a simulated run's trace"
else
	bad "keel-trace reads a simulated run's trace"
	head -3 "$dir/summary.txt"
fi

"$sim" --seeds x >/dev/null 2>&1
check "a bad number gives exit 2" test $? -eq 2
"$sim" --scenario nosuch >/dev/null 2>&1
check "an unknown scenario gives exit 2" test $? -eq 2

finish
