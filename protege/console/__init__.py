"""The web console: traffic, datasets, fine-tunes, evals, students and rollouts in a browser.

A FastAPI router mounted at ``/ui`` on the proxy's port by protege/app.py (the only importer: the
console is the top layer and may use store, evals and distill). Pages are server-rendered Jinja2
templates with charts as inline SVG; the one script, htmx, is vendored under ``static/`` with its
licence, so the console works offline and needs no build step.
"""

from .routes import router

__all__ = ["router"]
