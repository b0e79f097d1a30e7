"""How the operator logs in to the apiserver: in a pod, with its service account, at the address
the kubelet gives every pod; elsewhere, with the kubeconfig.

kopf's own service-account login names the server `https://kubernetes.default.svc`, a name that
only cluster DNS resolves. The kubelet also sets `KUBERNETES_SERVICE_HOST` and
`KUBERNETES_SERVICE_PORT` (the `kubernetes` Service's cluster IP), which is what client-go's
and the Python client's in-cluster configs use, so this works without DNS too (the local node
has none) and changes nothing where DNS works.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import kopf


def service_address(env: Mapping[str, str]) -> str | None:
    """`https://HOST:PORT` of the `kubernetes` Service from a pod's environment, if set."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    if info is None:
        return kopf.login_with_kubeconfig(**kwargs)
    server = service_address(os.environ)
    return dataclasses.replace(info, server=server) if server else info
