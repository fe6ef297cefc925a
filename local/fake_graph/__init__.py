"""A fake Microsoft Entra tenant: a Microsoft Graph v1.0 subset over real HTTP that msgraph-sdk talks to unchanged.

    from local.fake_graph import FakeGraph, load_tenant, generate_tenant
    fake = FakeGraph(tenants=[DEMO_TENANT]).start()
    ...  # the SDK's request adapter at fake.base_url, tokens from fake.authority (or fake.token_for(tid) in tests)
    fake.stop()
"""

from pathlib import Path
from typing import Any

from .server import FakeGraph
from .tenant import load_tenant

DEMO_TENANT = Path(__file__).parent / "tenants" / "demo.json"

__all__ = ["DEMO_TENANT", "FakeGraph", "generate_tenant", "load_tenant", "transitive_user_members"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `python -m local.fake_graph.generator` does not import the module twice.
    if name in ("generate_tenant", "transitive_user_members"):
        from . import generator

        return getattr(generator, name)
    raise AttributeError(name)
