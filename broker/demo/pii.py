"""Deterministic synthetic PII for the demo `customers` and `orders` tables.

Everything is derived from one seeded `random.Random`, so every run (and every machine) gets
the same rows and tests can assert on them. The values are shaped like the real thing so the
masker's detectors fire on them, while staying provably fake: emails use the reserved
example.* domains, phones the fictional 555-01xx range, cards are Luhn-valid numbers with
public test prefixes (the first row is Stripe's famous 4242 4242 4242 4242), and keys and
hashes are random strings in the right format.
"""

from __future__ import annotations

import base64
import json
import random
import string
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

DEFAULT_SEED = 20240501
DEFAULT_CUSTOMERS = 200

_FIRST = [
    "Alice", "Bruno", "Chloé", "Dmitri", "Emeka", "Fatima", "Grace", "Hiroshi", "Isabel", "Jamal",
    "Katarzyna", "Liam", "Mei", "Nikolai", "Olivia", "Priya", "Quentin", "Rosa", "Samir", "Tomás",
    "Uma", "Victor", "Wanjiru", "Xavier", "Yusuf", "Zoë", "Aiko", "Björn", "Carmen", "Deepak",
]
_LAST = [
    "Anderson", "Bianchi", "Chen", "Dubois", "Eriksen", "Fernández", "García", "Hoffmann",
    "Ivanova", "Johnson", "Kowalski", "López", "Müller", "Nakamura", "Okafor", "Patel", "Quinn",
    "Rossi", "Schmidt", "Tanaka", "Urquhart", "Van Dijk", "Williams", "Xu", "Yilmaz", "Zhang",
    "O'Brien", "Mbeki", "Novak", "Sørensen",
]
_DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com"]
_AREA_CODES = ["212", "312", "415", "503", "617", "702", "808", "917"]
# Public test prefixes and lengths: Visa, Mastercard, Amex, Discover.
_CARD_BRANDS = [("4", 16), ("51", 16), ("55", 16), ("34", 15), ("37", 15), ("6011", 16)]
_BCRYPT_ALPHABET = "./" + string.ascii_uppercase + string.ascii_lowercase + string.digits
_BASE62 = string.ascii_letters + string.digits
_ORDER_STATUSES = ["pending", "paid", "paid", "shipped", "shipped", "delivered", "refunded",
                   "cancelled"]
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Customer:
    full_name: str
    email: str
    phone: str
    ssn: str
    card_number: str
    api_key: str
    password_hash: str
    notes: str | None


@dataclass(frozen=True)
class Order:
    customer_id: int  # 1-based position in the customers list, i.e. its serial id
    status: str
    amount: Decimal
    created_at: datetime


def luhn_check_digit(payload: str) -> str:
    """The digit that makes `payload + digit` pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # doubled positions, counted from the (future) check digit's left
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    digits = "".join(ch for ch in number if ch.isdigit())
    return len(digits) > 1 and luhn_check_digit(digits[:-1]) == digits[-1]


def generate_customers(n: int = DEFAULT_CUSTOMERS, *, seed: int = DEFAULT_SEED) -> list[Customer]:
    rng = random.Random(seed)
    return [_customer(rng, i) for i in range(n)]


def generate_orders(n_customers: int = DEFAULT_CUSTOMERS, *,
                    seed: int = DEFAULT_SEED) -> list[Order]:
    # A separate stream, so changing the customer generator does not reshuffle orders.
    rng = random.Random(seed + 1)
    orders = []
    for customer_id in range(1, n_customers + 1):
        for _ in range(rng.randint(0, 4)):
            orders.append(Order(
                customer_id=customer_id,
                status=rng.choice(_ORDER_STATUSES),
                amount=Decimal(rng.randint(199, 99_999)).scaleb(-2),  # cents, always 2 places
                created_at=_EPOCH + timedelta(minutes=rng.randint(0, 365 * 24 * 60)),
            ))
    orders.sort(key=lambda o: o.created_at)  # ids then follow time, as in a real shop
    return orders


def _customer(rng: random.Random, i: int) -> Customer:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    card = "4242424242424242" if i == 0 else _card(rng)
    return Customer(
        full_name=f"{first} {last}",
        email=_email(rng, first, last, i),
        phone=_phone(rng),
        ssn=f"{rng.choice([n for n in range(100, 900) if n != 666]):03d}-"
            f"{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}",
        card_number=card,
        api_key="sk_live_" + "".join(rng.choices(_BASE62, k=24)),
        password_hash="$2b$12$" + "".join(rng.choices(_BCRYPT_ALPHABET, k=53)),
        notes=_note(rng, i),
    )


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded.lower() if ch.isalnum())


def _email(rng: random.Random, first: str, last: str, i: int) -> str:
    # The row number keeps emails unique even when a name repeats.
    return f"{_ascii(first)}.{_ascii(last)}{i + 1}@{rng.choice(_DOMAINS)}"


def _phone(rng: random.Random) -> str:
    return f"+1-{rng.choice(_AREA_CODES)}-555-01{rng.randint(0, 99):02d}"


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice(_CARD_BRANDS)
    body = prefix + "".join(rng.choices(string.digits, k=length - len(prefix) - 1))
    return body + luhn_check_digit(body)


def _spaced(card: str) -> str:
    return " ".join(card[i:i + 4] for i in range(0, len(card), 4))


def _jwt(rng: random.Random) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": str(rng.randint(1000, 9999)), "role": "staging"}).encode())
    return f"{header}.{payload}.{b64(rng.randbytes(32))}"


def _note(rng: random.Random, i: int) -> str | None:
    # Cycling by row index guarantees every kind of embedded secret appears, whatever the seed.
    kind = i % 10
    if kind in (0, 5):
        return None
    if kind == 1:
        return f"Prefers contact at {_email(rng, rng.choice(_FIRST), 'alt', i)} after 6pm."
    if kind == 2:
        return f"Paid by card {_spaced(_card(rng))} after the first one was declined."
    if kind == 3:
        return f"Called support from {_phone(rng)} about a late delivery."
    if kind == 4:
        return "VIP customer since 2019; prefers paper invoices."
    if kind == 6:
        return f"Pasted a staging token into chat by mistake: {_jwt(rng)}"
    if kind == 7:
        key = "AKIA" + "".join(rng.choices(string.ascii_uppercase + "234567", k=16))
        return f"Old AWS access key {key} was rotated on request."
    if kind == 8:
        return (f"Card {_card(rng)} disputed; follow up with billing@example.com "
                "before the refund.")
    return "Asked to be removed from the newsletter."
