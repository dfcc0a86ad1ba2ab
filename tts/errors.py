"""Errors the services raise; views and consumers turn them into 4xx replies."""

from __future__ import annotations


class ServiceError(Exception):
    status = 400
    code = "invalid"
    retry_after: int | None = None  # seconds, sent as Retry-After when set

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        fields: dict[str, str] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.fields = fields or {}
        if retry_after is not None:
            self.retry_after = max(1, int(retry_after))

    def as_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "fields": self.fields}}


class InvalidInput(ServiceError):
    status = 400
    code = "invalid"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "body_too_large"


class NotAllowed(ServiceError):
    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Gone(ServiceError):
    status = 410
    code = "gone"


class RateLimited(ServiceError):
    status = 429
    code = "rate_limited"
