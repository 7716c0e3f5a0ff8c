"""Deploy models to a Corral server and call them over the Open Inference Protocol.

    import corral
    deployment = corral.deploy(pipeline, "iris", tenant="iris", example_input=X[:5])
    deployment.predict(X)["label"]

``corral.deploy`` uses a ``Client`` built from ``CORRAL_SERVER`` and ``CORRAL_TOKEN``; make a
``Client`` to choose them in code."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ._client import Client, Deployment
from ._http import CorralError

__all__ = ["Client", "CorralError", "Deployment", "deploy"]
__version__ = "0.1.0"


def deploy(model: Any, name: str = "model", *, tenant: Optional[str] = None,
           example_input: Any = None, config: Optional[Mapping[str, Any]] = None,
           **options: Any) -> Deployment:
    """``Client().deploy(...)``: the server and token from ``CORRAL_SERVER`` and
    ``CORRAL_TOKEN``, the tenant from ``tenant=`` or ``CORRAL_TENANT``."""
    return Client().deploy(model, name, tenant=tenant, example_input=example_input,
                           config=config, **options)
