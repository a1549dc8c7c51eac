"""Feedback: scores, labels and corrections on captured completions, which datasets can select on.

The rows live in the store (``protege.store.feedback``); ``cli`` is ``protege feedback ...`` and ``api``
the ``/protege/v1/completions/{id}/feedback`` and ``/protege/v1/feedback`` routes.
"""
