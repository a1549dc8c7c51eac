"""Datasets: versioned fine-tuning datasets built from captured traffic.

``builder`` is the entry point (select -> examples -> prune/scrub/dedupe -> split -> write, with
``dpo`` for preference pairs, ``tokens`` for counts, ``validate`` for a file's check and ``card`` for
its dataset card); ``cli`` is ``protege dataset ...`` and ``api`` the ``/protege/v1/datasets`` routes.
"""
