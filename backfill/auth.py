"""GrowingIO authentication: the signed token request (pure) and, later, the token holder.

The token request is ``POST /auth/token`` with header ``X-Client-Id`` and the raw body
``project=<uid>&ai=<ai>&tm=<unix ms>&auth=<signature>``, where the signature is the
lowercase hex HMAC-SHA256, keyed with the private key, of
``"POST\\n/auth/token\\nproject=<uid>&ai=<ai>&tm=<unix ms>"``.
"""

from __future__ import annotations

import hashlib
import hmac

TOKEN_PATH = "/auth/token"


def signed_message(project_uid: str, ai: str, tm: int) -> str:
    """The text the signature covers."""
    return f"POST\n{TOKEN_PATH}\nproject={project_uid}&ai={ai}&tm={tm}"


def signature(secret: str, project_uid: str, ai: str, tm: int) -> str:
    """Lowercase hex HMAC-SHA256 of :func:`signed_message`, keyed with ``secret``."""
    message = signed_message(project_uid, ai, tm).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def token_request_body(secret: str, project_uid: str, ai: str, tm: int) -> str:
    """The raw body of the token request (not a form: the same text, sent as is)."""
    auth = signature(secret, project_uid, ai, tm)
    return f"project={project_uid}&ai={ai}&tm={tm}&auth={auth}"
