"""Distillation: a student learns a teacher's next-token distributions (``divergence`` holds the
math the papers share)."""
