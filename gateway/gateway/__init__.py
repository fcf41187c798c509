"""HTTP/JSON gateway of the mall: routes, auth, errors and docs derived from the protos.

``create_app(settings)`` builds the ASGI app; ``python -m gateway`` runs it.
"""

from gateway.app import create_app
from gateway.config import SERVICES, GatewaySettings

__all__ = ["SERVICES", "GatewaySettings", "create_app"]
