"""Typed errors of access control. Like every :class:`DoctorAIError` they carry a status and a
message that says what to do; the REST layer turns them into HTTP errors (with ``headers``,
e.g. ``Retry-After``), the UI into ``gr.Error``."""

from __future__ import annotations

import math

from inference.errors import DoctorAIError


class AuthenticationRequired(DoctorAIError):
    status_code = 401

    def __init__(
        self,
        message: str = "log in at /login, or send 'Authorization: Bearer <token>' with a token from POST /api/token",
    ) -> None:
        super().__init__(message)

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class InvalidCredentials(AuthenticationRequired):
    def __init__(self, message: str = "wrong username or password") -> None:
        super().__init__(message)


class InvalidToken(AuthenticationRequired):
    def __init__(
        self, message: str = "the token is invalid, expired or revoked; get a new one from POST /api/token"
    ) -> None:
        super().__init__(message)


class Forbidden(DoctorAIError):
    status_code = 403


class CsrfFailed(Forbidden):
    def __init__(self) -> None:
        super().__init__("the login form expired or was not sent from this site; reload the login page and try again")


class TooManyRequests(DoctorAIError):
    """429 with ``Retry-After`` (whole seconds, at least 1)."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class AccountLocked(TooManyRequests):
    pass


class DatabaseUnavailable(DoctorAIError):
    status_code = 503


class InvalidAccount(DoctorAIError):
    """A user-management request that breaks a rule (bad role, weak password, duplicate name)."""

    status_code = 400
