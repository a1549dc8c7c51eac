"""The distill rooms' seams: the public surface resolves, and the route the router hands the proxy
has the fields the proxy's own ``Route`` declares (the two are duck-typed: distill may not import
the proxy)."""

from __future__ import annotations

import dataclasses

import protege.distill
from protege.distill.auto import routing
from protege.proxy import hooks


def test_every_public_name_of_distill_resolves() -> None:
    for name in protege.distill.__all__:
        assert getattr(protege.distill, name) is not None, name


def test_the_proxy_route_declares_every_field_of_the_distill_route() -> None:
    def fields(cls: type) -> dict[str, object]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    assert fields(hooks.Route) == fields(routing.Route)
    assert hooks.Route("r", "protege/s", "full", compare_percent=25.0).compare_percent == 25.0
