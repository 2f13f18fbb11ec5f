"""Pruning methods: ``magnitude`` (baseline), ``wanda``, ``sparsegpt``, ``llm_pruner``
(structured); ``masks`` the shared score → mask and N:M math."""
