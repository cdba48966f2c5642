"""A real, local OpenID Connect provider for tests, built on Authlib's server side.

Authlib's authorization-server support is framework-bound, so the provider is a small Flask app
(``authlib.integrations.flask_oauth2.AuthorizationServer``) served by werkzeug on ``127.0.0.1``
from a background thread. The protocol logic is Authlib's own: ``AuthorizationCodeGrant`` with
the ``OpenIDCode`` (id_token, nonce) and ``CodeChallenge`` (PKCE) extensions, Authlib's client
authentication (``client_secret_basic`` and ``client_secret_post``), its bearer-token
``ResourceProtector`` and its ``UserInfoEndpoint``. Nothing here hand-writes a token response.
Storage is in memory and dies with the provider.

Endpoints (all under ``provider.issuer``, ``http://127.0.0.1:<free port>``):

* ``/.well-known/openid-configuration``: discovery metadata (validated with Authlib's
  ``OpenIDProviderMetadata`` on start);
* ``/jwks``: the public half of an RSA key generated per provider; id_tokens are RS256 and carry
  its ``kid``;
* ``/authorize``: authorization-code flow, no human involved (see "Who logs in");
* ``/token``: code exchange; PKCE S256 is honoured when the authorize request carried a
  ``code_challenge`` (``require_pkce=True`` makes it mandatory); a code works once;
* ``/userinfo``: bearer access token -> ``sub``, ``email``, ``email_verified``, ``name``,
  ``preferred_username`` (filtered by the granted scopes), plus ``groups`` when the user has any.

Who logs in: the authorize endpoint picks the user from the ``login_hint`` query parameter
(matched against the users' keys, ``preferred_username`` or ``email``) or, when there is none,
from ``provider.current_user``; it then approves consent on its own. An unknown or missing user
gets Authlib's ``error=access_denied`` redirect back to the relying party.

Redirect URIs are matched exactly against the client's list (``redirect_uris=`` at construction,
or ``provider.add_redirect_uri(uri)`` once the relying party's callback URL is known). With
``allow_loopback_redirects=True`` any ``http://127.0.0.1``, ``http://[::1]`` or
``http://localhost`` URI (any port, any path) is also accepted.

Plain HTTP: Authlib >= 1.9 treats loopback URLs (127.0.0.1, ::1, localhost) as secure transport
(RFC 8252 §7.3), so neither this provider nor an Authlib client talking to it needs
``AUTHLIB_INSECURE_TRANSPORT``. The provider must be reached by a loopback host name, which is
what ``issuer`` gives. The redirect URI itself is never transport-checked, so an RP at
``http://testserver`` (Starlette's TestClient) is fine once its callback is registered.

Typical use::

    from tests.oidc_provider import LocalOIDCProvider

    users = {
        "alice": {"email": "alice@example.org", "name": "Alice Doe", "groups": ["clinicians"]},
        "bob": {"sub": "b-42", "email": "bob@example.org", "name": "Bob Roe"},
    }
    with LocalOIDCProvider(client_id="doctorai", client_secret="s3cret", users=users) as op:
        oauth.register(
            "sso",
            client_id="doctorai",
            client_secret="s3cret",
            server_metadata_url=op.metadata_url,
            client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256"},
        )
        op.add_redirect_uri("http://127.0.0.1:8000/auth/callback")
        op.current_user = "alice"  # or let the RP forward login_hint=alice
        ...  # drive the RP's login; then inspect op.authorize_requests / op.token_auth_methods
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

# Authlib ships no type information (no py.typed), so everything imported from it is ``Any`` to
# mypy (``ignore_missing_imports``); subclassing those classes is fine under this config.
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError, grants, scope_to_list
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo, UserInfoEndpoint
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.discovery import OpenIDProviderMetadata
from flask import Flask, Response, jsonify, request
from joserfc.jwk import RSAKey
from werkzeug.serving import BaseWSGIServer, make_server

__all__ = ["SCOPES", "LocalOIDCProvider", "OIDCUser"]

#: Scopes the provider accepts. ``groups`` is accepted for RPs that ask for it, but the
#: ``groups`` claim is sent whenever the user has groups, whatever the scope.
SCOPES = ("openid", "email", "profile", "groups")
CLAIMS = (
    *("sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash"),
    *("email", "email_verified", "name", "preferred_username", "groups"),
)

TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
CODE_LIFETIME_S = 600


@dataclass
class OIDCUser:
    """A test user. ``preferred_username`` is also what ``login_hint`` / ``current_user`` name."""

    preferred_username: str
    email: str
    name: str
    sub: str = ""  # defaults to "sub-<preferred_username>"
    email_verified: bool = True
    groups: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.sub:
            self.sub = f"sub-{self.preferred_username}"

    @classmethod
    def from_mapping(cls, username: str, data: Mapping[str, Any]) -> OIDCUser:
        """Build from a plain dict; ``username`` (the dict key) is the default preferred_username."""
        groups = data.get("groups")
        return cls(
            preferred_username=str(data.get("preferred_username", username)),
            email=str(data.get("email", f"{username}@example.org")),
            name=str(data.get("name", username)),
            sub=str(data.get("sub", "")),
            email_verified=bool(data.get("email_verified", True)),
            groups=None if groups is None else [str(g) for g in groups],
        )

    def user_info(self, scope: str) -> UserInfo:
        """Claims for the id_token and the userinfo response, filtered by the granted scope."""
        info = UserInfo(
            sub=self.sub,
            email=self.email,
            email_verified=self.email_verified,
            name=self.name,
            preferred_username=self.preferred_username,
        ).filter(scope)
        if self.groups is not None:
            info["groups"] = list(self.groups)
        return info


def _is_loopback_http(uri: str) -> bool:
    parts = urlsplit(uri)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


class _Client:
    """The one confidential client (Authlib's ``ClientMixin`` protocol, duck-typed).

    It reads the provider's attributes live, so ``add_redirect_uri`` (or any change to
    ``redirect_uris`` / ``allow_loopback_redirects`` / ``client_secret``) applies at once.
    """

    def __init__(self, provider: LocalOIDCProvider) -> None:
        self.provider = provider
        # Read by Authlib's UserInfoEndpoint (userinfo_signed_response_alg): plain JSON userinfo.
        self.client_metadata: dict[str, Any] = {}

    @property
    def client_id(self) -> str:
        return self.provider.client_id

    def get_client_id(self) -> str:
        return self.provider.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.provider.redirect_uris[0] if self.provider.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(s for s in scope_to_list(scope or "") if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if redirect_uri in self.provider.redirect_uris:
            return True
        return self.provider.allow_loopback_redirects and _is_loopback_http(redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret.encode(), self.provider.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in TOKEN_AUTH_METHODS if endpoint == "token" else True

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class _AuthorizationCode:
    """Authlib's OIDC ``AuthorizationCodeMixin`` protocol, duck-typed."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: OIDCUser
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return None

    def is_expired(self) -> bool:
        return time.time() > self.auth_time + CODE_LIFETIME_S


@dataclass
class _Token:
    """Authlib's ``TokenMixin`` protocol, duck-typed."""

    access_token: str
    client: _Client
    user: OIDCUser
    scope: str
    expires_in: int
    issued_at: float = field(default_factory=time.time)
    revoked: bool = False

    def check_client(self, client: _Client) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> OIDCUser:
        return self.user

    def get_client(self) -> _Client:
        return self.client


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(TOKEN_AUTH_METHODS)

    def _provider(self) -> LocalOIDCProvider:
        provider: LocalOIDCProvider = self.server.provider
        return provider

    def save_authorization_code(self, code: str, req: Any) -> None:
        data = req.payload.data
        self._provider()._save_code(
            _AuthorizationCode(
                code=code,
                client_id=req.client.client_id,
                redirect_uri=req.payload.redirect_uri or "",
                scope=req.scope,
                user=req.user,
                nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
            )
        )

    def query_authorization_code(self, code: str, client: _Client) -> _AuthorizationCode | None:
        item = self._provider()._codes.get(code)
        if item is None or item.client_id != client.client_id or item.is_expired():
            return None
        return item

    def delete_authorization_code(self, authorization_code: _AuthorizationCode) -> None:
        self._provider()._codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: _AuthorizationCode) -> OIDCUser:
        return authorization_code.user


class _OpenIDCode(OpenIDCode):
    def __init__(self, provider: LocalOIDCProvider, require_nonce: bool) -> None:
        super().__init__(require_nonce=require_nonce)
        self.provider = provider

    def exists_nonce(self, nonce: str, req: Any) -> bool:
        return (req.payload.client_id, nonce) in self.provider._nonces

    def resolve_client_private_key(self, client: _Client) -> RSAKey:
        return self.provider._key

    def get_client_algorithm(self, client: _Client) -> str:
        return "RS256"

    def get_encode_header(self, client: _Client) -> dict[str, str]:
        return {"alg": "RS256", "kid": self.provider.kid}

    def get_client_claims(self, client: _Client) -> dict[str, Any]:
        return {"iss": self.provider.issuer, "aud": client.client_id}

    def generate_user_info(self, user: OIDCUser, scope: str) -> UserInfo:
        return user.user_info(scope)


class _CodeChallenge(CodeChallenge):
    """PKCE, S256 only (what discovery advertises); mandatory for every client if ``required``."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if data.get("code_challenge") and not data.get("code_challenge_method"):
            raise InvalidRequestError("'code_challenge_method' must be 'S256'")
        if self.required and not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'")
        super().validate_code_challenge(grant, redirect_uri)


class _UserInfoEndpoint(UserInfoEndpoint):
    def generate_user_info(self, user: OIDCUser, scope: str) -> UserInfo:
        return user.user_info(scope)


class _BearerTokenValidator(BearerTokenValidator):
    def __init__(self, provider: LocalOIDCProvider) -> None:
        super().__init__()
        self.provider = provider

    def authenticate_token(self, token_string: str) -> _Token | None:
        return self.provider._tokens.get(token_string)


class _Server(AuthorizationServer):
    provider: LocalOIDCProvider


class LocalOIDCProvider:
    """An OpenID Connect provider on ``127.0.0.1:<free port>``; see the module docstring.

    Use it as a context manager (or call ``start()`` / ``stop()``). Attributes a test may read or
    set while it runs:

    * ``current_user``: who logs in when the authorize request has no ``login_hint``;
    * ``users``: ``dict[str, OIDCUser]`` keyed by login name (``add_user`` adds one);
    * ``client_id``, ``client_secret``, ``redirect_uris`` (``add_redirect_uri`` appends),
      ``allow_loopback_redirects``;
    * ``authorize_requests``: the query parameters of every authorize request, in order;
    * ``token_auth_methods``: the client authentication method of every successful token
      request (``client_secret_basic`` / ``client_secret_post``).
    """

    def __init__(
        self,
        client_id: str = "doctorai",
        client_secret: str = "s3cret",
        users: Mapping[str, OIDCUser | Mapping[str, Any]] | None = None,
        redirect_uris: Iterable[str] = (),
        *,
        current_user: str | None = None,
        allow_loopback_redirects: bool = False,
        require_pkce: bool = False,
        require_nonce: bool = False,
        token_expires_in: int = 3600,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris: list[str] = list(redirect_uris)
        self.users: dict[str, OIDCUser] = {}
        for username, data in (users or {}).items():
            self.add_user(data if isinstance(data, OIDCUser) else OIDCUser.from_mapping(username, data), username)
        self.current_user = current_user
        self.allow_loopback_redirects = allow_loopback_redirects
        self.authorize_requests: list[dict[str, str]] = []
        self.token_auth_methods: list[str] = []

        self._key = RSAKey.generate_key(2048, auto_kid=True)
        self._client = _Client(self)
        self._codes: dict[str, _AuthorizationCode] = {}
        self._tokens: dict[str, _Token] = {}
        self._nonces: set[tuple[str, str]] = set()
        self._httpd: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

        self.app = Flask(f"{__name__}.{id(self)}")
        self.app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": token_expires_in}
        server = _Server(self.app, query_client=self._query_client, save_token=self._save_token)
        server.provider = self
        server.scopes_supported = list(SCOPES)
        server.register_grant(
            _AuthorizationCodeGrant,
            [_OpenIDCode(self, require_nonce=require_nonce), _CodeChallenge(required=require_pkce)],
        )
        protector = ResourceProtector()
        protector.register_token_validator(_BearerTokenValidator(self))
        server.register_endpoint(_UserInfoEndpoint(resource_protector=protector))
        self._server = server

        self.app.add_url_rule("/.well-known/openid-configuration", "discovery", self._discovery)
        self.app.add_url_rule("/jwks", "jwks", self._jwks)
        self.app.add_url_rule("/authorize", "authorize", self._authorize, methods=["GET", "POST"])
        self.app.add_url_rule("/token", "token", self._token, methods=["POST"])
        self.app.add_url_rule("/userinfo", "userinfo", self._userinfo, methods=["GET", "POST"])

    # -- public API ------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """``http://127.0.0.1:<port>``; only known once started."""
        if self._httpd is None:
            raise RuntimeError("the provider is not running; use it as a context manager or call start()")
        return f"http://127.0.0.1:{self._httpd.server_port}"

    @property
    def metadata_url(self) -> str:
        """The discovery document's URL (Authlib's ``server_metadata_url``)."""
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def kid(self) -> str:
        """The ``kid`` of the signing key (in the JWKS and every id_token header)."""
        return str(self._key.kid)

    def public_jwks(self) -> dict[str, Any]:
        """The JWKS the provider publishes at ``/jwks``."""
        return {"keys": [{**self._key.as_dict(private=False), "use": "sig", "alg": "RS256"}]}

    def metadata(self) -> dict[str, Any]:
        """The discovery document."""
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": list(SCOPES),
            "claims_supported": list(CLAIMS),
            "token_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
            "code_challenge_methods_supported": ["S256"],
        }

    def add_user(self, user: OIDCUser, username: str | None = None) -> None:
        """Register ``user`` under ``username`` (default: its ``preferred_username``)."""
        self.users[username or user.preferred_username] = user

    def add_redirect_uri(self, uri: str) -> None:
        """Allow one more exact redirect URI for the client (e.g. the RP's callback, once known)."""
        if uri not in self.redirect_uris:
            self.redirect_uris.append(uri)

    def find_user(self, hint: str) -> OIDCUser | None:
        """The user a ``login_hint`` names: by login name, ``preferred_username`` or ``email``."""
        if hint in self.users:
            return self.users[hint]
        return next((u for u in self.users.values() if hint in (u.preferred_username, u.email)), None)

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        self._httpd = make_server("127.0.0.1", 0, self.app, threaded=True)
        OpenIDProviderMetadata(self.metadata()).validate()
        # A short poll interval keeps stop() (which waits for the serving loop) fast.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="local-oidc-provider", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- storage hooks (Authlib callbacks) -------------------------------------------------

    def _query_client(self, client_id: str) -> _Client | None:
        return self._client if client_id == self._client.client_id else None

    def _save_code(self, item: _AuthorizationCode) -> None:
        self._codes[item.code] = item
        if item.nonce:
            self._nonces.add((item.client_id, item.nonce))

    def _save_token(self, token: dict[str, Any], req: Any) -> None:
        self._tokens[token["access_token"]] = _Token(
            access_token=token["access_token"],
            client=req.client,
            user=req.user,
            scope=token.get("scope", ""),
            expires_in=int(token.get("expires_in", 3600)),
        )
        self.token_auth_methods.append(req.auth_method)

    # -- views -----------------------------------------------------------------------------

    def _discovery(self) -> Response:
        return jsonify(self.metadata())

    def _jwks(self) -> Response:
        return jsonify(self.public_jwks())

    def _authorize(self) -> Response:
        self.authorize_requests.append(request.values.to_dict())
        hint = request.values.get("login_hint") or self.current_user
        user = self.find_user(hint) if hint else None
        try:
            grant = self._server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            response: Response = self._server.handle_error_response(None, error)
            return response
        # No consent screen: a known user approves at once; None makes Authlib redirect with
        # error=access_denied (and the request's state).
        response = self._server.create_authorization_response(grant_user=user, grant=grant)
        return response

    def _token(self) -> Response:
        response: Response = self._server.create_token_response()
        return response

    def _userinfo(self) -> Response:
        response: Response = self._server.create_endpoint_response("userinfo")
        return response
