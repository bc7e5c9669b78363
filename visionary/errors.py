"""The API's error model: `{"error": "<a sentence a person can act on>", "code": "<snake_case>"}`.

Everything that goes wrong on purpose is an `ApiError`; the HTTP layer turns it
into a JSON response. Messages are written by the app, never copied from exceptions,
so no key, SAS signature or stack trace can reach a response body.
"""

from __future__ import annotations

from collections.abc import Mapping


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def to_json(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}

    @classmethod
    def invalid_json(cls, message: str) -> ApiError:
        return cls(400, "invalid_json", message)

    @classmethod
    def invalid_prompt(cls, message: str) -> ApiError:
        return cls(400, "invalid_prompt", message)

    @classmethod
    def prompt_too_long(cls, limit: int) -> ApiError:
        return cls(400, "prompt_too_long", f"The prompt is longer than {limit} characters; shorten it.")

    @classmethod
    def invalid_parameter(cls, message: str) -> ApiError:
        return cls(400, "invalid_parameter", message)

    @classmethod
    def payload_too_large(cls, limit: int) -> ApiError:
        return cls(413, "payload_too_large", f"The request body is larger than {limit} bytes.")

    @classmethod
    def content_policy_violation(cls) -> ApiError:
        return cls(
            400,
            "content_policy_violation",
            "The image model refused this prompt under its content policy; rephrase it.",
        )

    @classmethod
    def rate_limited(cls, message: str, retry_after_seconds: int) -> ApiError:
        # Script on another origin may read only the headers CORS exposes.
        headers = {"Retry-After": str(max(1, retry_after_seconds)), "Access-Control-Expose-Headers": "Retry-After"}
        return cls(429, "rate_limited", message, headers)

    @classmethod
    def upstream_error(cls, message: str = "The model service failed; try again in a moment.") -> ApiError:
        return cls(502, "upstream_error", message)

    @classmethod
    def upstream_timeout(cls) -> ApiError:
        return cls(504, "upstream_timeout", "The model service did not answer in time; try again.")

    @classmethod
    def storage_unavailable(cls) -> ApiError:
        return cls(503, "storage_unavailable", "Image storage is unavailable right now; try again shortly.")

    @classmethod
    def not_configured(cls, message: str) -> ApiError:
        return cls(503, "not_configured", message)

    @classmethod
    def idempotency_conflict(cls) -> ApiError:
        return cls(
            409, "idempotency_conflict",
            "This Idempotency-Key was used for a different request; use a new key for a new prompt.",
        )

    @classmethod
    def in_progress(cls) -> ApiError:
        return cls(409, "in_progress", "A request with this Idempotency-Key is still running; retry later.")

    @classmethod
    def not_found(cls, message: str = "No such endpoint.") -> ApiError:
        return cls(404, "not_found", message)

    @classmethod
    def method_not_allowed(cls, allowed: list[str]) -> ApiError:
        allow = ", ".join(allowed)
        return cls(405, "method_not_allowed", f"Use {allow} for this endpoint.", {"Allow": allow})

    @classmethod
    def internal(cls) -> ApiError:
        return cls(500, "internal_error", "Something went wrong on our side; it has been logged.")
