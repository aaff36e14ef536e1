"""Trust boundaries: which EHRs are trusted (``trusted_issuers``), their keys (``jwks``) and the JWT
check at every CDS Hooks call (``ehr_auth``). Its replay cache, which every worker and replica
shares, is in the store's database (:mod:`cds_service.store.replay_cache`)."""


class AuthenticationError(Exception):
    """The request is not from a trusted CDS Client. ``reason`` is for the log, never the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReplayCheckUnavailable(Exception):
    """The replay cache could not be consulted (its database failed) or cannot keep another pair
    (full): the token may be valid, so this is not an authentication failure. The web layer
    answers 503 (retry later), never 401. ``reason`` is a fixed text or an exception class, never
    a value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def quoted(value: object, limit: int = 80) -> str:
    """``value`` for a reason: ``repr``-quoted and truncated, so a value taken from a token (an
    ``iss``, a ``kid``) cannot forge log lines or flood them."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
