"""Typed domain errors.

Every error a user can cause or meet carries a message that says what is allowed and an
HTTP status. The edges translate them: tabs raise ``gr.Error(err.message)``, routes return
``HTTPException(err.status_code, err.message)``. Nothing below the edges knows about HTTP
beyond that number.
"""

from __future__ import annotations


class DoctorAIError(Exception):
    """Base class of every error DoctorAI reports to users."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        """Extra HTTP response headers (``Retry-After``, ``WWW-Authenticate``)."""
        return {}


class InvalidInput(DoctorAIError):
    """The request itself is malformed (missing file, bad parameter)."""

    status_code = 400


class UnsupportedImage(DoctorAIError):
    """The bytes are not an image format DoctorAI reads."""

    status_code = 415


class CorruptImage(DoctorAIError):
    """The file claims a supported format but cannot be decoded (truncated, damaged)."""

    status_code = 422


class UnsupportedDicom(DoctorAIError):
    """A DICOM file that holds no usable image (no pixel data, unknown photometric, ...)."""

    status_code = 422


class ImageTooLarge(DoctorAIError):
    """Too many bytes, or too many pixels (decompression bomb guard)."""

    status_code = 413


class UnknownModel(DoctorAIError):
    """No model with that id in the registry."""

    status_code = 404


class ModelNotInstalled(DoctorAIError):
    """The model is registered but its weights are not on disk."""

    status_code = 503


class ModelExperimental(DoctorAIError):
    """The model's own evidence misses its floor and experimental models are not enabled."""

    status_code = 403


class ModelLoadFailed(DoctorAIError):
    """The weights exist but could not be loaded (bad file, checksum mismatch, ...)."""

    status_code = 503


class InferenceError(DoctorAIError):
    """The model failed while running on valid input."""

    status_code = 500
