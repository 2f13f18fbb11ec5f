"""``efflm bench``: the harness that measures every recipe the same way, one row each.

``suites`` the named recipe sets · ``runner`` runs rows (local subprocesses, or Ray tasks:
``ray_executor``) · ``worker`` one row in its own process (compress, perplexity, bytes, speed) ·
``db`` the SQLite results database · ``leaderboard`` the table, Markdown and Pareto plot ·
``run_cache`` finished benchmark runs keyed by the code that ran them."""
