"""Automatic distillation: policies say what to distill; the worker trains, gates and rolls out.

``policies`` (TOML policies) -> ``worker`` (the loop: dataset, fine-tune job, evaluation) ->
``selection`` (best-in-budget among candidates), ``evaluation`` (the held-out answers scored once,
as an eval run) and ``gate`` (the decision from that run: student vs teacher, with confidence) ->
``rollout`` (routes at shadow/canary/full, manual promote/rollback) -> ``routing`` (the proxy's view
of live routes) and ``agreement`` (online student/teacher agreement that moves a route on or back).
``status`` shapes what ``cli`` (``protege auto ...``, ``protege worker``) and ``api`` show.
"""
