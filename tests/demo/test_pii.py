"""The synthetic PII generator: deterministic, well-formed, and seeded with every secret kind."""

from __future__ import annotations

import re

import pytest

from broker.demo.pii import (
    generate_customers,
    generate_orders,
    luhn_check_digit,
    luhn_valid,
)

CUSTOMERS = generate_customers()


@pytest.mark.parametrize("number", ["4242424242424242", "4111111111111111", "378282246310005",
                                    "5555555555554444", "4242 4242 4242 4242"])
def test_luhn_accepts_known_test_cards(number: str) -> None:
    assert luhn_valid(number)


def test_luhn_rejects_a_wrong_check_digit() -> None:
    assert not luhn_valid("4242424242424241")
    assert luhn_check_digit("424242424242424") == "2"


def test_generation_is_deterministic() -> None:
    assert generate_customers() == CUSTOMERS
    assert generate_orders() == generate_orders()
    assert generate_customers(seed=1) != CUSTOMERS


def test_fields_have_realistic_shapes() -> None:
    assert len(CUSTOMERS) == 200
    assert CUSTOMERS[0].card_number == "4242424242424242"
    assert len({c.email for c in CUSTOMERS}) == 200  # the column is UNIQUE
    for c in CUSTOMERS:
        assert re.fullmatch(r"[a-z]+\.[a-z]+\d+@(mail\.)?example\.(com|org|net)", c.email)
        assert re.fullmatch(r"\+1-\d{3}-555-01\d\d", c.phone)
        assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", c.ssn)
        assert luhn_valid(c.card_number) and len(c.card_number) in (15, 16)
        assert re.fullmatch(r"sk_live_[A-Za-z0-9]{24}", c.api_key)
        assert re.fullmatch(r"\$2b\$12\$[./A-Za-z0-9]{53}", c.password_hash)


def test_notes_hide_secrets_in_free_text() -> None:
    notes = [c.notes for c in CUSTOMERS if c.notes]
    assert 0 < len(notes) < len(CUSTOMERS)

    def count(pattern: str) -> int:
        return sum(1 for n in notes if re.search(pattern, n))

    assert count(r"[\w.]+@[\w.]+\.\w+") >= 20
    assert count(r"\+1-\d{3}-555-") >= 20
    assert count(r"\beyJ[\w-]+\.eyJ[\w-]+\.[\w-]+") >= 20  # JWTs
    assert count(r"\bAKIA[A-Z2-7]{16}\b") >= 20  # AWS access key ids
    cards = [m.group(0) for n in notes for m in re.finditer(r"\b\d[\d ]{13,18}\d\b", n)]
    assert len(cards) >= 40 and all(luhn_valid(card) for card in cards)
    assert any(" " in card for card in cards) and any(" " not in card for card in cards)


def test_orders_reference_existing_customers() -> None:
    orders = generate_orders()
    assert 200 < len(orders) < 1000
    assert {o.customer_id for o in orders} <= set(range(1, 201))
    assert [o.created_at for o in orders] == sorted(o.created_at for o in orders)
    assert all(o.amount > 0 and o.amount.as_tuple().exponent == -2 for o in orders)
