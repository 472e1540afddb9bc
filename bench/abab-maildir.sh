#!/bin/bash
# abab-maildir.sh "LABELS" ROUNDS COUNT [bench.py args...]: the maildir stage at 1 and 4
# threads, binaries alternated in each round, each with its own durable_loop reference.
W=${BENCH_WORK:-/var/tmp/spoolreplay-bench}  # holds spoolreplay-LABEL binaries
LABELS=$1; R=$2; N=$3; shift 3
cd "$(dirname "$0")/.."
for r in $(seq $R); do
  for b in $LABELS; do
    python3 bench/bench.py --work $W --bin $W/spoolreplay-$b --label $b-r$r --formats eml --counts $N \
      --stages maildir --maildir-count $N --concurrency 1,4 "$@" 2>/dev/null | grep RESULT
  done
done
