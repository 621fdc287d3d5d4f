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
# Two lanes, one per core (most tests use one core, so a lane alone would leave the other idle):
#   A: every notebook in smoke mode under nbmake (runs/smoke: the kill test's reference and the run the browser test
#      opens), then the tests but lane B's;
#   B: beside it, notebooks 01-06 on one of the four tiny model families (tests/test_family_notebooks.py, ~7 min; the
#      family turns with the commit count, so any four consecutive commits run all four), the tests of the scale study
#      and the GPU check's dry run (~4 min, independent of the rest), then, once A's notebooks are done, the kill -9
#      test (the whole smoke job killed and resumed, ~6.5 min). Two families per run put the test command at 23.5 min.
KILL=tests/test_kill_resume.py::test_the_main_job_survives_kill_9_anywhere
FAMILIES=tests/test_family_notebooks.py
BESIDE=(tests/test_scale.py tests/test_gpu_check.py)
commits=$(git rev-list --count HEAD 2>/dev/null || echo 0)
ORDER=(llama gemma2 gemma3 mistral)  # tests/test_family_notebooks.py's FAMILIES
pick=${ORDER[commits % 4]}
mkdir -p runs
rm -f runs/.notebooks-done
(
  lane=0
  python -m pytest -q "$FAMILIES" -k "$pick" -p no:cacheprovider --durations=1 || lane=$?
  python -m pytest -q "${BESIDE[@]}" -p no:cacheprovider --durations=3 || lane=$?
  while [ ! -f runs/.notebooks-done ]; do sleep 2; done
  python -m pytest -q "$KILL" -p no:cacheprovider --durations=1 || lane=$?
  exit "$lane"
) > runs/lane_b.log 2>&1 &
lane_b=$!
# on an interruption, lane B's pytest gets SIGTERM, and its tests stop the jobs they started
trap 'pkill -TERM -P "$lane_b" 2>/dev/null || true; rm -f runs/.notebooks-done' EXIT
status=0
python -m pytest -q --nbmake notebooks --nbmake-timeout=900 -p no:cacheprovider --durations=7 || status=$?
touch runs/.notebooks-done
python -m pytest -q tests --deselect "$KILL" --ignore "$FAMILIES" "${BESIDE[@]/#/--ignore=}" -p no:cacheprovider --durations=25 || status=$?
lane_b_status=0
wait "$lane_b" || lane_b_status=$?
trap - EXIT
rm -f runs/.notebooks-done
echo "--- lane B: notebooks 01-06 on the tiny $pick model, ${BESIDE[*]}, then the kill -9 test (log: runs/lane_b.log) ---"
if [ "$lane_b_status" -eq 0 ]; then grep -E "passed|[0-9.]+s call" runs/lane_b.log; else cat runs/lane_b.log; fi
[ "$status" -eq 0 ] && [ "$lane_b_status" -eq 0 ]
