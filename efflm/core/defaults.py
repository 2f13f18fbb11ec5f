"""Defaults shared by several layers that must not pull in torch (the CLI builds its parser from
them before any command runs)."""

EVAL_SEQ_LEN, EVAL_WINDOWS = 512, 4  # default evaluation: 4 windows of 512 tokens (2,044 scored)
CALIB_SAMPLES, CALIB_LEN = 8, 512  # default calibration: 8 windows of 512 tokens
