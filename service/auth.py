"""API keys: every data route on every transport asks `ApiKeys.check`; health stays open."""

from __future__ import annotations

import hmac

from service.config import Settings
from service.errors import Unauthenticated


class ApiKeys:
    def __init__(self, settings: Settings):
        self._keys = [key.encode() for key in sorted(settings.secrets())]

    def check(self, authorization: str | None) -> None:
        """authorization: the raw `Authorization` header / metadata value, or None."""
        if not self._keys:
            return
        if not authorization:
            raise Unauthenticated("missing API key: send the header 'Authorization: Bearer <key>'")
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise Unauthenticated("malformed Authorization header: expected 'Bearer <key>'")
        candidate = presented.strip().encode()
        # compare against every key, always, so timing reveals neither match nor position
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise Unauthenticated("invalid API key")
