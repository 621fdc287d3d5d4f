#!/usr/bin/env bash
# The tests: unit tests plus every notebook in smoke mode under nbmake. Does its own set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# MKL results independent of memory alignment: one full test run saw TL-vs-HF differences 10x the usual
# (1.6e-3 instead of 1.5e-4) that no isolated rerun reproduced. Suspected (not confirmed) cause: MKL sgemm
# results varying with memory alignment, which MKL_CBWR removes at no measured cost (100-113 GFLOP/s).
export MKL_CBWR=AUTO
# One thread per process: the kill -9 test runs beside the other tests (below), and two processes of two threads each
# on 2 cores starved each other (torch's tiny ops wait at thread barriers for a descheduled thread: smoke notebook 03
# took 279 s instead of 38 s). The smoke job, overhead-bound, takes 233 s on one thread against 210 s on two. The
# nbmake notebooks run on one thread too: they are the kill test's reference, compared to the last bit.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export REFUSAL_PRESET=smoke HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error WANDB_MODE=disabled
rm -rf runs/smoke  # smoke outputs are disposable; notebook 02 reads the caches notebook 01 writes in this run
if [ $# -gt 0 ]; then  # arguments (-m "not slow", -k ...): one pytest run of notebooks and tests, as before
  exec python -m pytest -q --nbmake notebooks tests --nbmake-timeout=900 -p no:cacheprovider --durations=25 "$@"
fi
# 1. Every notebook in smoke mode under nbmake: runs/smoke is then the reference of the kill test and the run the
#    browser test opens.
python -m pytest -q --nbmake notebooks --nbmake-timeout=900 -p no:cacheprovider --durations=7
# 2. The tests; the kill -9 test (the whole smoke job, killed and resumed: ~5 min, one core most of the time) in a
#    second process beside the others, which leave the second core mostly idle.
KILL=tests/test_kill_resume.py::test_the_main_job_survives_kill_9_anywhere
mkdir -p runs
python -m pytest -q "$KILL" -p no:cacheprovider --durations=1 > runs/kill_test.log 2>&1 &
kill_pid=$!
trap 'kill -TERM "$kill_pid" 2>/dev/null || true' EXIT  # the test then stops the job it started
status=0
python -m pytest -q tests --deselect "$KILL" -p no:cacheprovider --durations=25 || status=$?
kill_status=0
wait "$kill_pid" || kill_status=$?
trap - EXIT
echo "--- the kill -9 test (run beside the others; its log: runs/kill_test.log) ---"
tail -n 25 runs/kill_test.log
[ "$status" -eq 0 ] && [ "$kill_status" -eq 0 ]
