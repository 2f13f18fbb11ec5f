"""The survey as data: ``papers.yaml`` (one record per paper), ``store`` reading and writing it,
``lint`` its checks, ``render`` ``docs/papers.md`` linked to methods' files and measured rows,
``suggest`` category suggestions, ``seed_import``/``seed_additions`` the survey's import, and
``papers_cli`` the ``efflm papers ...`` commands."""
