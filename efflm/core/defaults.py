"""Defaults shared by several layers that must not pull in torch (the CLI builds its parser from
them before any command runs)."""

EVAL_SEQ_LEN, EVAL_WINDOWS = 512, 4  # default evaluation: 4 windows of 512 tokens (2,044 scored)
CALIB_SAMPLES, CALIB_LEN = 8, 512  # default calibration: 8 windows of 512 tokens

# Where a user's runs land: the results database, leaderboard.md, pareto.png and report.html
# (``runs/`` under the working directory; git-ignored in a checkout). The committed reference
# results live in ``results/`` and change only through ``make reference``, which names them.
RUNS_DIR = "runs"
RUNS_DB = f"{RUNS_DIR}/efflm.sqlite"
REFERENCE_DB = "results/efflm.sqlite"
