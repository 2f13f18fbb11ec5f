"""Low-rank methods: ``svd`` (baseline), ``fwsvd``, ``losparse``; ``factorize`` the shared math
(weighted SVD, the global rank budget, installing factors)."""
