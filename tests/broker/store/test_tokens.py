# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from broker.exceptions import AuthError, ExpiredToken, InvalidToken
from broker.store import Store
from broker.store.models import GatewayToken
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401


async def issue(store: Store, *, reusable: bool = True, ttl: timedelta = timedelta(hours=1)):
    return await store.tokens.issue_token(
        "agent:demo", ["ai-agents", "dev"], "demo", "readwrite", ttl, reusable
    )


async def test_issued_token_verifies_to_its_grant(store: Store, clock: FakeClock) -> None:
    issued = await issue(store)
    assert re.fullmatch(r"jgt_[A-Za-z0-9_-]{43}", issued.token)
    assert issued.expires_at == clock.now + timedelta(hours=1)

    grant = await store.tokens.verify_token(issued.token, "demo")

    assert grant.token_id == issued.token_id
    assert grant.principal == "agent:demo"
    assert grant.groups == ("ai-agents", "dev")
    assert (grant.resource, grant.role, grant.reusable) == ("demo", "readwrite", True)
    assert grant.expires_at == issued.expires_at
    assert grant.expires_at.tzinfo is not None


async def test_tokens_are_random_and_stored_only_as_sha256(store: Store) -> None:
    a, b = await issue(store), await issue(store)
    assert a.token != b.token and a.token_id != b.token_id
    assert a.token not in repr(a)  # the plaintext stays out of reprs and logs

    async with store.transaction("read") as session:
        row = await session.scalar(select(GatewayToken).where(GatewayToken.id == a.token_id))
        assert row is not None
        assert row.token_hash == hashlib.sha256(a.token.encode()).hexdigest()
        # No column anywhere holds the plaintext.
        dump = (await session.execute(text("SELECT * FROM gateway_tokens"))).all()
    assert a.token not in repr(dump)
    assert a.token[4:] not in repr(dump)


async def test_reusable_token_verifies_many_times(store: Store) -> None:
    issued = await issue(store, reusable=True)
    for _ in range(3):
        assert (await store.tokens.verify_token(issued.token, "demo")).token_id == issued.token_id


async def test_single_session_token_is_consumed_by_first_verify(store: Store) -> None:
    issued = await issue(store, reusable=False)
    await store.tokens.verify_token(issued.token, "demo")
    with pytest.raises(InvalidToken) as err:
        await store.tokens.verify_token(issued.token, "demo")
    assert err.value.reason == "used"


async def test_single_session_token_racing_verifies_only_one_wins(store: Store) -> None:
    issued = await issue(store, reusable=False)
    results = await asyncio.gather(
        *(store.tokens.verify_token(issued.token, "demo") for _ in range(5)), return_exceptions=True
    )
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InvalidToken)]
    assert len(granted) == 1
    assert len(refused) == 4 and {r.reason for r in refused} == {"used"}


async def test_expired_token_is_refused(store: Store, clock: FakeClock) -> None:
    issued = await issue(store, ttl=timedelta(minutes=30))
    clock.advance(timedelta(minutes=29, seconds=59))
    await store.tokens.verify_token(issued.token, "demo")
    clock.advance(timedelta(seconds=1))
    with pytest.raises(ExpiredToken) as err:
        await store.tokens.verify_token(issued.token, "demo")
    assert err.value.reason == "expired"


async def test_refusal_does_not_consume_a_single_session_token(store: Store) -> None:
    issued = await issue(store, reusable=False, ttl=timedelta(minutes=1))
    with pytest.raises(InvalidToken):
        await store.tokens.verify_token(issued.token, "other")
    # Refused for the wrong resource: still unused, so it works for the right one.
    await store.tokens.verify_token(issued.token, "demo")


async def test_token_for_another_resource_is_refused(store: Store) -> None:
    issued = await issue(store)
    with pytest.raises(InvalidToken) as err:
        await store.tokens.verify_token(issued.token, "billing")
    assert err.value.reason == "wrong_resource"


async def test_revoked_token_is_refused(store: Store) -> None:
    issued = await issue(store)
    assert await store.tokens.revoke_token(issued.token_id) is True
    assert await store.tokens.revoke_token(issued.token_id) is False  # already revoked
    assert await store.tokens.revoke_token("no-such-id") is False
    with pytest.raises(InvalidToken) as err:
        await store.tokens.verify_token(issued.token, "demo")
    assert err.value.reason == "revoked"


@pytest.mark.parametrize(
    ("presented", "reason"),
    [
        ("", "malformed"),
        ("hunter2", "malformed"),
        ("jgt_short", "malformed"),
        ("jgt_" + "A" * 43 + "'; drop table x; --", "malformed"),
        ("jgt_" + "A" * 43, "unknown"),
    ],
)
async def test_unknown_or_malformed_tokens_are_refused(
    store: Store, presented: str, reason: str
) -> None:
    await issue(store)
    with pytest.raises(InvalidToken) as err:
        await store.tokens.verify_token(presented, "demo")
    assert err.value.reason == reason
    assert isinstance(err.value, AuthError)


async def test_a_tampered_token_is_refused(store: Store) -> None:
    issued = await issue(store)
    last = issued.token[-1]
    tampered = issued.token[:-1] + ("A" if last != "A" else "B")
    with pytest.raises(InvalidToken):
        await store.tokens.verify_token(tampered, "demo")


async def test_ttl_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await issue(store, ttl=timedelta(0))
