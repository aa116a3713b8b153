#!/bin/bash
# Run a command, each line of its stderr prefixed with the seconds since the start (bash >= 5):
#   bash benchmarks/ts.sh transferscope run -o /tmp/study
# The report phase of a study is read from the last run's line to the "exit" line.
micros() { local t=${EPOCHREALTIME/./}; echo "${t#0}"; }
start=$(micros)
stamp() { local d=$(( ($(micros) - start) / 100000 )); printf '%6d.%d %s\n' $((d / 10)) $((d % 10)) "$1"; }
"$@" 2> >(while IFS= read -r line; do stamp "$line"; done >&2)
rc=$?
sleep 0.1  # let the stamping of the last lines finish
stamp "exit $rc" >&2
exit $rc
