"""OIDC token verification against the configured issuers.

    verifier = OIDCVerifier(settings.oidc.issuers, http=httpx.AsyncClient())
    principal = await verifier.verify(jwt)          # raises IdentityError(reason=...)

Order of checks, each refusal with its own `reason` label:

1. the token parses as a JWS (`malformed`), and its unverified `iss` names a configured
   issuer (`unknown_issuer`) - nothing is fetched for issuers we do not trust;
2. the header's `alg` is one of the issuer's asymmetric algorithms (`alg_not_allowed`): this
   refuses `none` and HS256 before any key is chosen, so a public key can never be used as an
   HMAC secret;
3. the key is found by `kid` in the issuer's JWKS (cached; refetched once on an unknown `kid`,
   at most every `min_refresh_seconds`, so a flood of made-up kids cannot hammer the
   provider) and its type fits the algorithm (`unknown_kid`, `key_mismatch`);
4. signature (`bad_signature`), `iss` (`wrong_issuer`), `aud` (`wrong_audience`), `exp`
   (`expired`), `nbf`/`iat` (`not_yet_valid`), with the issuer's leeway; `exp`, `iss`, `aud`
   and `sub` are required (`missing_claim`).

The issuer being unreachable raises `IssuerUnavailable` (fail closed; the caller answers 503).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import jwt
from jwt import PyJWK

from broker.exceptions import AuthError, JitgateError
from broker.identity.settings import OidcIssuerSettings

DISCOVERY_TTL_SECONDS = 3600.0
JWKS_TTL_SECONDS = 600.0
MIN_REFRESH_SECONDS = 30.0
HTTP_TIMEOUT_SECONDS = 5.0

Kind = Literal["person", "agent"]


class IdentityError(AuthError):
    """An OIDC token was refused; `reason` is a short label, `str()` a sentence safe to show."""


class IssuerUnavailable(JitgateError):
    """Discovery or JWKS could not be fetched from a trusted issuer."""


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified identity: who, from which issuer, in which groups, person or agent."""

    subject: str
    issuer: str
    email: str | None = None
    groups: tuple[str, ...] = ()
    kind: Kind = "person"
    owner: str | None = None
    expires_at: float | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        """The name recorded on grants and sessions, e.g. `person:alice@example.com`."""
        return f"{self.kind}:{self.email or self.subject}"

    @property
    def owner_id(self) -> str | None:
        """The owner as a principal name (`person:bob`), as grants and approvals record it."""
        if self.owner is None:
            return None
        return self.owner if self.owner.startswith(("person:", "agent:")) else f"person:{self.owner}"


@dataclass(slots=True)
class _IssuerState:
    jwks_uri: str | None = None
    discovered_at: float = float("-inf")
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys_fetched_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class OIDCVerifier:
    """Verifies JWTs from the configured issuers; one per process, shared by requests."""

    def __init__(
        self,
        issuers: Iterable[OidcIssuerSettings],
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_refresh_seconds: float = MIN_REFRESH_SECONDS,
    ) -> None:
        self._issuers = {i.issuer: i for i in issuers}
        self._http = http or httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS)
        self._clock = clock
        self._min_refresh = min_refresh_seconds
        self._state: dict[str, _IssuerState] = {}
        self.fetches = 0  # JWKS fetches so far: lets operators (and tests) see the cache work

    @property
    def issuers(self) -> Mapping[str, OidcIssuerSettings]:
        return self._issuers

    async def aclose(self) -> None:
        await self._http.aclose()

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise IdentityError("not a signed JWT", reason="malformed") from None
        iss = unverified.get("iss")
        conf = self._issuers.get(iss) if isinstance(iss, str) else None
        if conf is None:
            raise IdentityError(f"issuer {str(iss)[:200]!r} is not trusted", reason="unknown_issuer")
        alg = header.get("alg")
        if alg not in conf.algorithms:
            allowed = ", ".join(conf.algorithms)
            raise IdentityError(
                f"algorithm {str(alg)[:20]!r} is not accepted (allowed: {allowed})", reason="alg_not_allowed"
            )
        key = await self._key(conf, header.get("kid"), alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=conf.audience,
                issuer=conf.issuer,
                leeway=conf.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise IdentityError("token expired", reason="expired") from None
        except jwt.ImmatureSignatureError:
            raise IdentityError("token not yet valid (nbf/iat in the future)", reason="not_yet_valid") from None
        except jwt.InvalidAudienceError:
            raise IdentityError("token audience is not this broker", reason="wrong_audience") from None
        except jwt.InvalidIssuerError:
            raise IdentityError("token issuer mismatch", reason="wrong_issuer") from None
        except jwt.InvalidSignatureError:
            raise IdentityError("token signature does not verify", reason="bad_signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise IdentityError(f"token lacks the {exc.claim!r} claim", reason="missing_claim") from None
        except jwt.PyJWTError as exc:
            raise IdentityError(f"token refused ({type(exc).__name__})", reason="invalid") from None
        return principal_from_claims(conf, claims)

    async def _key(self, conf: OidcIssuerSettings, kid: object, alg: str) -> PyJWK:
        state = self._state.setdefault(conf.issuer, _IssuerState())
        async with state.lock:
            now = self._clock()
            stale = now - state.keys_fetched_at > JWKS_TTL_SECONDS
            unknown = not isinstance(kid, str) or kid not in state.keys
            # A rotated key shows up as an unknown kid: refetch, but not more often than allowed.
            if stale or (unknown and now - state.keys_fetched_at >= self._min_refresh):
                await self._fetch_keys(conf, state)
        jwk = state.keys.get(kid) if isinstance(kid, str) else None
        if jwk is None and len(state.keys) == 1 and kid is None:
            jwk = next(iter(state.keys.values()))  # a kid-less token against a one-key JWKS
        if jwk is None:
            raise IdentityError(f"no key {str(kid)[:64]!r} in the issuer's JWKS", reason="unknown_kid")
        try:
            key = PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError:
            raise IdentityError(f"key {kid!r} does not fit algorithm {alg}", reason="key_mismatch") from None
        expected = {"RS256": "RSA", "ES256": "EC"}[alg]
        if jwk.get("kty") != expected:
            raise IdentityError(f"key {kid!r} does not fit algorithm {alg}", reason="key_mismatch")
        return key

    async def _fetch_keys(self, conf: OidcIssuerSettings, state: _IssuerState) -> None:
        now = self._clock()
        if state.jwks_uri is None or now - state.discovered_at > DISCOVERY_TTL_SECONDS:
            doc = await self._get_json(conf.issuer.rstrip("/") + "/.well-known/openid-configuration")
            if doc.get("issuer") != conf.issuer or not isinstance(doc.get("jwks_uri"), str):
                # A discovery document for another issuer would let that issuer's keys in.
                raise IssuerUnavailable(f"discovery document of {conf.issuer} is inconsistent")
            state.jwks_uri, state.discovered_at = doc["jwks_uri"], now
        assert state.jwks_uri is not None  # noqa: S101 - set just above
        jwks = await self._get_json(state.jwks_uri)
        keys = jwks.get("keys")
        if not isinstance(keys, list):
            raise IssuerUnavailable(f"JWKS of {conf.issuer} has no key list")
        state.keys = {k["kid"]: k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}
        if not state.keys and len(keys) == 1 and isinstance(keys[0], dict):
            state.keys = {"": keys[0]}
        state.keys_fetched_at = now
        self.fetches += 1

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, timeout=HTTP_TIMEOUT_SECONDS)
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise IssuerUnavailable(f"cannot fetch {url}: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise IssuerUnavailable(f"{url} did not return a JSON object")
        return data


def principal_from_claims(conf: OidcIssuerSettings, claims: Mapping[str, Any]) -> Principal:
    """Read subject, email, groups (mapped) and kind from verified claims."""
    raw = claims.get(conf.groups_claim, [])
    if isinstance(raw, str):
        raw = raw.replace(",", " ").split()
    values = [str(g) for g in raw] if isinstance(raw, list) else []
    groups: list[str] = []
    for value in values:
        groups.extend(conf.group_mapping.get(value, [value]))
    for key, mapped in conf.group_mapping.items():
        claim, sep, expected = key.partition("=")
        if sep and str(claims.get(claim, "")) == expected:
            groups.extend(mapped)
    kind: Kind = conf.kind
    if conf.kind_claim and claims.get(conf.kind_claim) in ("person", "agent"):
        kind = claims[conf.kind_claim]
    owner = claims.get(conf.owner_claim) if conf.owner_claim else None
    # An address the provider has not verified must not become the principal's name: anyone
    # could claim someone else's and, say, revoke their grants.
    email = claims.get("email") if claims.get("email_verified", True) is not False else None
    exp = claims.get("exp")
    return Principal(
        subject=str(claims["sub"]),
        issuer=conf.issuer,
        email=email if isinstance(email, str) else None,
        groups=tuple(dict.fromkeys(groups)),
        kind=kind,
        owner=str(owner) if owner is not None else None,
        expires_at=float(exp) if isinstance(exp, int | float) else None,
    )
