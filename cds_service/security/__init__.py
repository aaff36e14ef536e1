"""Trust boundaries: which EHRs are trusted (``trusted_issuers``), their keys (``jwks``), the JWT
check at every CDS Hooks call (``ehr_auth``) and the replay cache its workers share
(``shared_replay``)."""


class AuthenticationError(Exception):
    """The request is not from a trusted CDS Client. ``reason`` is for the log, never the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def quoted(value: object, limit: int = 80) -> str:
    """``value`` for a reason: ``repr``-quoted and truncated, so a value taken from a token (an
    ``iss``, a ``kid``) cannot forge log lines or flood them."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
