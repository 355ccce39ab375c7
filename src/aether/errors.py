"""The one exception tree of Aether, mapped to the API envelope in one place.

    AetherError                      code                 status
    ├── BadRequestError              bad_request (or missing_digest, invalid_digest) 400
    │   ├── DigestMismatchError      digest_mismatch      400
    │   ├── SignatureRequiredError   signature_required   400
    │   ├── SignatureInvalidError    signature_invalid    400
    │   └── UnsafeArchiveError       unsafe_archive (or a more precise code) 400
    ├── UnauthorizedError            unauthorized         401
    ├── ForbiddenError               forbidden            403
    ├── QuotaExceededError           quota_exceeded       403
    ├── EgressDeniedError            egress_denied        403
    ├── NotFoundError                not_found            404
    ├── ConflictError                conflict             409
    ├── PayloadTooLargeError         payload_too_large    413
    ├── RateLimitedError             rate_limited         429
    ├── BadGatewayError              bad_gateway (or a model_* code) 502
    ├── UpstreamFailedError          upstream_failed      502
    ├── ServiceUnavailableError      service_unavailable  503
    ├── NoEndpointError              no_endpoint          503
    ├── DeadlineExceededError        deadline_exceeded    504
    └── InternalError                internal             500

The server turns any of these into ``{"code", "message", "trace_id"}`` with the
status above (``aether.server.http.errors``); the API client turns the envelope back
into the same class (``aether.client``), so callers catch one tree everywhere.
"""

from __future__ import annotations

__all__ = [
    "AetherError",
    "BadGatewayError",
    "BadRequestError",
    "ConflictError",
    "DeadlineExceededError",
    "DigestMismatchError",
    "EgressDeniedError",
    "ForbiddenError",
    "InternalError",
    "NoEndpointError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QuotaExceededError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "SignatureInvalidError",
    "SignatureRequiredError",
    "UnauthorizedError",
    "UnsafeArchiveError",
    "UpstreamFailedError",
    "error_for",
]


class AetherError(Exception):
    code = "internal"
    status = 500
    #: more fields of the envelope beside code, message and trace_id (None: none)
    details: dict[str, object] | None = None

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class BadRequestError(AetherError):
    code = "bad_request"
    status = 400


class DigestMismatchError(BadRequestError):
    code = "digest_mismatch"


class SignatureRequiredError(BadRequestError):
    """The app requires signed artifacts and this one carries no signature."""

    code = "signature_required"


class SignatureInvalidError(BadRequestError):
    """A malformed signature, or one that verifies against none of the app's keys."""

    code = "signature_invalid"


class UnsafeArchiveError(BadRequestError):
    """An archive that would write outside its target, or is too big, or is not an archive.

    ``code`` says which: ``path_traversal``, ``absolute_path``, ``link_escape``,
    ``special_file``, ``archive_too_large``, ``too_many_entries``, ``corrupt_archive``.
    """

    code = "unsafe_archive"


class UnauthorizedError(AetherError):
    code = "unauthorized"
    status = 401


class ForbiddenError(AetherError):
    code = "forbidden"
    status = 403


class QuotaExceededError(ForbiddenError):
    """A tenant's quota would be exceeded; ``details`` names it: quota, limit, used,
    requested (a ForbiddenError: the request is refused until use goes down)."""

    code = "quota_exceeded"

    def __init__(self, message: str, *, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.details = details


class EgressDeniedError(ForbiddenError):
    """A call a tenant chose (a model's base URL, a tool's URL) would reach a host the
    policy does not list, or a loopback, link-local, private, unspecified or multicast
    address the cluster does not allow (``aether.agents.egress``)."""

    code = "egress_denied"


class NotFoundError(AetherError):
    code = "not_found"
    status = 404


class ConflictError(AetherError):
    code = "conflict"
    status = 409


class PayloadTooLargeError(AetherError):
    code = "payload_too_large"
    status = 413


class RateLimitedError(AetherError):
    """Too many requests from one tenant; the answer says when to retry (Retry-After)."""

    code = "rate_limited"
    status = 429


class BadGatewayError(AetherError):
    """Something the server called on the caller's behalf (a model provider) failed,
    refused or answered nonsense; ``code`` says which (``model_unauthorized``,
    ``model_rejected``, ``model_unavailable``, ``model_timeout``, ``model_unreachable``,
    ``model_bad_answer``: ``aether.agents.llm``)."""

    code = "bad_gateway"
    status = 502


class ServiceUnavailableError(AetherError):
    code = "service_unavailable"
    status = 503


class InternalError(AetherError):
    code = "internal"
    status = 500


class NoEndpointError(AetherError):
    """A slice's entry point (or an app) has no ACTIVE instance to call."""

    code = "no_endpoint"
    status = 503


class DeadlineExceededError(AetherError):
    """A slice call got no answer by its deadline."""

    code = "deadline_exceeded"
    status = 504


class UpstreamFailedError(AetherError):
    """The instance called was lost with the call, or answered nothing usable."""

    code = "upstream_failed"
    status = 502


_BY_STATUS: dict[int, type[AetherError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


_BY_CODE: dict[str, type[AetherError]] = {
    "digest_mismatch": DigestMismatchError,
    "signature_required": SignatureRequiredError,
    "signature_invalid": SignatureInvalidError,
    "quota_exceeded": QuotaExceededError,
    "egress_denied": EgressDeniedError,
    # a 502 is ours only with one of these codes (a proxy's bare 502 stays internal)
    "bad_gateway": BadGatewayError,
    "upstream_failed": UpstreamFailedError,
    "no_endpoint": NoEndpointError,
    "deadline_exceeded": DeadlineExceededError,
    "model_unauthorized": BadGatewayError,
    "model_rejected": BadGatewayError,
    "model_unavailable": BadGatewayError,
    "model_timeout": BadGatewayError,
    "model_unreachable": BadGatewayError,
    "model_bad_answer": BadGatewayError,
}


def error_for(status: int, code: str | None, message: str) -> AetherError:
    """The exception for an envelope received over HTTP.

    ``code`` None (an answer without an envelope, e.g. to a HEAD): the status's own
    code (``unauthorized`` for 401, ``not_found`` for 404, ``internal`` for an
    unknown status).
    """
    if code in _BY_CODE:
        error = _BY_CODE[code](message)
        error.code = code  # a model_* code stays what it was
        return error
    cls = _BY_STATUS.get(status, InternalError)
    return cls(message, code=code)
