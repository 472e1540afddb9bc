#!/bin/bash
# abab-wire.sh "LABELS" ROUNDS [bench.py args...]: bench.py smtp,lmtp at 1 and 4
# connections, the binaries alternated in each round, each run with its own smtp-source
# reference.
W=${BENCH_WORK:-/var/tmp/spoolreplay-bench}  # holds spoolreplay-LABEL binaries
LABELS=$1; R=$2; shift 2
cd "$(dirname "$0")/.."
for r in $(seq $R); do
  for b in $LABELS; do
    python3 bench/bench.py --work $W --bin $W/spoolreplay-$b --label $b-r$r --formats postfix --counts 10000 \
      --stages smtp,lmtp --replay-count 10000 --concurrency 1,4 "$@" 2>/dev/null | grep RESULT
  done
done
