"""OIDCVerifier: what it accepts, and each refusal by its own test."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.identity.oidc import IdentityError, IssuerUnavailable
from tests.broker.identity.issuer import FakeIssuer


@pytest.fixture
def idp() -> FakeIssuer:
    return FakeIssuer()


async def refused(idp: FakeIssuer, token: str, **kw: object) -> IdentityError:
    verifier = idp.verifier(**kw)  # type: ignore[arg-type]
    with pytest.raises(IdentityError) as info:
        await verifier.verify(token)
    return info.value


async def test_rs256_token_gives_principal_with_mapped_groups(idp: FakeIssuer) -> None:
    conf = idp.settings(group_mapping={"engineers": ["ai-agents"], "repository=acme/app": ["ci"]})
    principal = await idp.verifier(conf).verify(idp.mint(repository="acme/app"))
    assert principal.subject == "u-123"
    assert principal.issuer == idp.issuer
    assert principal.groups == ("ai-agents", "ci")
    assert principal.kind == "person"
    assert principal.id == "person:alice@example.com"


async def test_es256_token_and_agent_kind(idp: FakeIssuer) -> None:
    conf = idp.settings(kind="agent", owner_claim="actor", groups_claim="roles")
    principal = await idp.verifier(conf).verify(idp.mint("ES256", email=None, roles="a b", actor="bob"))
    assert principal.kind == "agent"
    assert principal.owner == "bob"
    assert principal.groups == ("a", "b")
    assert principal.id == "agent:u-123"


async def test_jwks_is_cached(idp: FakeIssuer) -> None:
    verifier = idp.verifier()
    for _ in range(3):
        await verifier.verify(idp.mint())
    assert idp.jwks_requests == 1


async def test_none_algorithm_refused(idp: FakeIssuer) -> None:
    token = jwt.encode(idp.claims(), None, algorithm="none")
    err = await refused(idp, token)
    assert err.reason == "alg_not_allowed"
    assert "'none'" in str(err)
    assert idp.jwks_requests == 0


async def test_hs256_signed_with_public_key_refused(idp: FakeIssuer) -> None:
    err = await refused(idp, idp.mint_hs256_with_public_key())
    assert err.reason == "alg_not_allowed"
    assert "HS256" in str(err)


async def test_expired_refused(idp: FakeIssuer) -> None:
    err = await refused(idp, idp.mint(exp=int(time.time()) - 120))
    assert err.reason == "expired"


async def test_expiry_within_leeway_accepted(idp: FakeIssuer) -> None:
    principal = await idp.verifier().verify(idp.mint(exp=int(time.time()) - 5))
    assert principal.subject == "u-123"


async def test_nbf_in_future_refused(idp: FakeIssuer) -> None:
    err = await refused(idp, idp.mint(nbf=int(time.time()) + 600))
    assert err.reason == "not_yet_valid"


async def test_wrong_audience_refused(idp: FakeIssuer) -> None:
    err = await refused(idp, idp.mint(aud="someone-else"))
    assert err.reason == "wrong_audience"


async def test_unknown_issuer_refused_without_fetching(idp: FakeIssuer) -> None:
    err = await refused(idp, idp.mint(iss="https://evil.test/"))
    assert err.reason == "unknown_issuer"
    assert "evil.test" in str(err)
    assert idp.jwks_requests == 0


async def test_missing_exp_refused(idp: FakeIssuer) -> None:
    err = await refused(idp, idp.mint(exp=None))
    assert err.reason == "missing_claim"


async def test_bad_signature_refused(idp: FakeIssuer) -> None:
    impostor = rsa.generate_private_key(65537, 2048)
    err = await refused(idp, idp.mint(key=impostor))  # right kid, wrong key
    assert err.reason == "bad_signature"


async def test_key_of_wrong_type_refused(idp: FakeIssuer) -> None:
    err = await refused(idp, idp.mint("ES256", kid=idp.rsa_kid))
    assert err.reason == "key_mismatch"


async def test_unknown_kid_refreshes_jwks_after_rotation(idp: FakeIssuer) -> None:
    now = [1000.0]
    verifier = idp.verifier(clock=lambda: now[0], min_refresh_seconds=30)
    await verifier.verify(idp.mint())
    idp.rotate()
    now[0] += 31
    principal = await verifier.verify(idp.mint())  # new kid: one refetch finds it
    assert principal.subject == "u-123"
    assert idp.jwks_requests == 2


async def test_unknown_kid_refetch_is_rate_limited(idp: FakeIssuer) -> None:
    now = [1000.0]
    verifier = idp.verifier(clock=lambda: now[0], min_refresh_seconds=30)
    await verifier.verify(idp.mint())
    for i in range(5):
        with pytest.raises(IdentityError) as info:
            await verifier.verify(idp.mint(kid=f"made-up-{i}"))
        assert info.value.reason == "unknown_kid"
    assert idp.jwks_requests == 1  # made-up kids did not hammer the provider
    idp.rotate()
    now[0] += 30
    await verifier.verify(idp.mint())
    assert idp.jwks_requests == 2


async def test_unreachable_issuer_fails_closed(idp: FakeIssuer) -> None:
    idp.down = True
    with pytest.raises(IssuerUnavailable):
        await idp.verifier().verify(idp.mint())


async def test_malformed_token_refused(idp: FakeIssuer) -> None:
    err = await refused(idp, "not.a.jwt")
    assert err.reason == "malformed"


async def test_unverified_email_is_not_the_principal_name(idp: FakeIssuer) -> None:
    principal = await idp.verifier().verify(idp.mint(email_verified=False))
    assert principal.email is None
    assert principal.id == "person:u-123"
