#!/usr/bin/env bash
# A newcomer's first run, timed: a fresh clone of this repository's HEAD, then `make install` and
# `make run` with no venv, no pip cache and an empty $ARCHLOOP_HOME and $ARCHLOOP_CACHE (all under one
# temporary folder, removed at the end unless KEEP=1). Every output line is stamped with the second it
# came, so the install's steps, the corpus build and the run can be told apart afterwards.
#
#     bash bench/first_run.sh          # prints the stages' seconds; logs in $WORK/*.log
set -u
root="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-$(mktemp -d /tmp/first-run-XXXXXX)}"
stamp() { while IFS= read -r line; do echo "$(date +%s) $line"; done; }
git clone -q "$root" "$WORK/clone" && cd "$WORK/clone" || exit 2
export PIP_NO_CACHE_DIR=1 ARCHLOOP_HOME="$WORK/home" ARCHLOOP_CACHE="$WORK/cache"
t0=$(date +%s)
make install 2>&1 | stamp > "$WORK/install.log"
t1=$(date +%s)
make run RUN_ARGS="--name first-run --dashboard-port 0" 2>&1 | stamp > "$WORK/run.log"
t2=$(date +%s)
at() { grep -m1 "$1" "$2" | cut -d' ' -f1; }
torch=$(at "pip install.*torch==" "$WORK/install.log"); project=$(at 'pip install.*-e ' "$WORK/install.log")
fetch=$(at "corpus fetch" "$WORK/install.log"); stack=$(at "starting the local stack" "$WORK/run.log")
experiment=$(at "^[0-9]* experiment first-run on" "$WORK/run.log"); report=$(at "report: " "$WORK/run.log")
echo "make install $((t1 - t0)) s: venv $((torch - t0)), torch $((project - torch)), project + ML extras $((fetch - project)), LEMUR wheel $((t1 - fetch))"
echo "make run $((t2 - t1)) s: corpus build $((stack - t1)), stack start $((experiment - stack)), experiment + report $((t2 - experiment)) (report line at +$((report - experiment)) s)"
echo "total $((t2 - t0)) s; logs in $WORK"
[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK/clone" "$WORK/home" "$WORK/cache"
