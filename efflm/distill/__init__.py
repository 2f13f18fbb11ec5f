"""Distillation: a student learns a teacher's next-token distributions. Above the other method
families (a student may be compressed and trains through fine-tuning's loop).

``divergence`` the KL/JSD math the papers share · ``chunked`` the same through the LM head a chunk
of tokens at a time · ``topk`` the cached top-k teacher · ``hidden`` hidden-state matching ·
``objective`` the loss and what the student trains · paper files: ``kd`` (Hinton), ``gkd``
(on-policy), ``llm_qat`` (data-free quantization-aware training)."""
