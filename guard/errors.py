"""Every error the guard answers with, as one tree. A leaf module: it imports nothing of the guard.

Each class carries its HTTP ``status``; the stable ``code`` (what clients branch on) is given when
one is raised, ``NotFound("unknown_image", "no image ...")``; the tree below lists every code.
The one exception handler (``guard.responses``, installed by ``guard.app``) writes any of them as
the documented JSON ``{"error": {"code": ..., "message": ...}}``; the admin pages render the same
fields as a page.

    GuardError                      500 internal_error
    ├── ConfigError                 a GUARD_* setting (or the scorer's files) cannot work: at start-up
    ├── RequestError                4xx: the request is refused; nothing was decided
    │   ├── BadRequest              400 invalid_json, invalid_multipart, invalid_content_length,
    │   │                               client_disconnected, unexpected_file, invalid_form
    │   ├── Unauthorized            401 unauthorized
    │   ├── Forbidden               403 channel_forbidden
    │   ├── NotFound                404 not_found, unknown_image
    │   ├── BodyTimeout             408 body_timeout
    │   ├── ImageExpired            410 image_expired (past GUARD_IMAGE_RETENTION_DAYS)
    │   ├── LengthRequired          411 length_required (an admin form with a photo)
    │   ├── BodyTooLarge            413 body_too_large
    │   ├── InvalidField            422 missing_field, wrong_type, too_long, invalid_text, empty_reply, ...
    │   └── ImageError              413 image_too_large, image_too_many_pixels, image_decoded_too_large;
    │       │                       415 unsupported_image_format; 422 the other image codes
    │       │                       (image_too_many_scans, image_decode_timeout, ...)
    │       └── FetchError          422 image_url_not_allowed, image_fetch_failed (an image URL)
    └── ServiceError                5xx: the guard or a service it depends on failed
        ├── Unavailable             503 database_unavailable, scorer_unavailable, upstream_not_configured,
        │   │                           image_decoder_busy
        │   ├── KeysUnavailable     503 database_unavailable (guard.keys: an API key cannot be checked)
        │   ├── ScorerError         503 scorer_unavailable (guard.scoring: the scorer cannot load or score)
        │   └── SpoolUnavailable    503 spool_unavailable (a decision cannot be made durable)
        ├── UpstreamError           502 upstream_unavailable, upstream_error, upstream_malformed,
        │                               upstream_too_large
        └── UpstreamTimeout         504 upstream_timeout
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

ImageDecodeCode = Literal[
    "invalid_base64",
    "image_too_large",
    "image_too_many_pixels",
    "not_an_image",
    "unsupported_image_format",
    "truncated_image",
    "empty_image",
    "image_too_many_scans",
    "image_decoded_too_large",
    "image_decode_timeout",
]
"""Why the decoder refused a photo's bytes."""
ImageErrorCode = Literal[ImageDecodeCode, "image_url_not_allowed", "image_fetch_failed"]


class GuardError(Exception):
    """The root: ``code`` is stable (clients branch on it), ``message`` says what is wrong, for humans."""

    status: int = 500

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code: str = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"

    def to_json(self) -> dict[str, Any]:
        """The documented error body."""
        return {"error": {"code": self.code, "message": self.message}}


class ConfigError(GuardError, ValueError):
    """A setting that cannot work; raised at start-up (or by a command), never on a request's path."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_setting", message)


class RequestError(GuardError):
    """The request is refused (4xx); nothing was decided."""

    status = 400


class BadRequest(RequestError):
    status = 400


class Unauthorized(RequestError):
    status = 401


class Forbidden(RequestError):
    status = 403


class NotFound(RequestError):
    status = 404


class ImageExpired(RequestError):
    """A registered photo past GUARD_IMAGE_RETENTION_DAYS: gone, register it again."""

    status = 410


class BodyTimeout(RequestError):
    status = 408


class LengthRequired(RequestError):
    status = 411


class BodyTooLarge(RequestError):
    status = 413


class InvalidField(RequestError):
    status = 422


class ImageError(RequestError, ValueError):
    """A photo was refused. Built with its code first, ``ImageError(code, message)``; the status
    follows from the code (too large: 413, a format not accepted: 415, anything else: 422)."""

    _STATUS: ClassVar[dict[str, int]] = {
        "image_too_large": 413,
        "image_too_many_pixels": 413,
        "image_decoded_too_large": 413,
        "unsupported_image_format": 415,
    }

    def __init__(self, code: ImageErrorCode, message: str) -> None:
        super().__init__(code, message)
        self.code: ImageErrorCode = code
        self.status = self._STATUS.get(code, 422)


class FetchError(ImageError):
    """An image URL that is refused (not allowed, private) or could not be fetched."""


class ServiceError(GuardError):
    """The guard or a service it depends on failed (5xx)."""

    status = 503


class Unavailable(ServiceError):
    status = 503


class ScorerError(Unavailable):
    """The scorer could not produce a score, or cannot be loaded (model missing, bad calibration, a
    dead rerank server, ...). Raised by the backends in ``guard.scoring`` with a message only; on a
    request's path the pipeline turns it into the policy's ``on_error`` action."""

    def __init__(self, message: str) -> None:
        super().__init__("scorer_unavailable", message)


class SpoolUnavailable(Unavailable):
    """A decision could not be appended to the spool (its disk is full or failing) and the guard may
    not answer it from memory (GUARD_SPOOL_ON_ERROR ``503``, or ``hold`` before the reply is held)."""

    @classmethod
    def because(cls, why: str) -> SpoolUnavailable:
        return cls(
            "spool_unavailable", f"the decision could not be written to the local spool ({why}); try again"
        )


class UpstreamError(ServiceError):
    status = 502


class UpstreamTimeout(ServiceError):
    status = 504


SettingsError = ConfigError
"""The name settings.py has always used for a bad GUARD_* value."""

__all__ = [
    "BadRequest",
    "BodyTimeout",
    "BodyTooLarge",
    "ConfigError",
    "FetchError",
    "Forbidden",
    "GuardError",
    "ImageDecodeCode",
    "ImageError",
    "ImageErrorCode",
    "ImageExpired",
    "InvalidField",
    "LengthRequired",
    "NotFound",
    "RequestError",
    "ScorerError",
    "ServiceError",
    "SettingsError",
    "SpoolUnavailable",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
    "UpstreamTimeout",
]
