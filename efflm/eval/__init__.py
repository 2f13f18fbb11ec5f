"""Measuring a model: ``metrics`` perplexity, bytes, decode speed, the bandwidth ceiling ·
``env`` the environment a row was measured in (kernels included) · ``tasks`` efflm's own task
accuracy · ``lm_eval_model``/``lm_eval_run``/``offline_tasks`` lm-evaluation-harness on efflm's
forward and decode path, with offline tasks (``lm_tasks/``)."""
