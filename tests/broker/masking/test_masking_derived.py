"""Values derived from sensitive columns are masked whole, through the statement's lineage."""

from __future__ import annotations

from broker.masking import ColumnInfo, Masker, MaskingConfig
from broker.masking.config import ColumnRule, NameRules
from broker.masking.derived import derived_rules
from broker.policy import Lineage, PolicyEngine
from tests.broker.masking.copy_info import CopyOptions

TEXT, INT4, TEXT_ARRAY, JSON = 25, 23, 1009, 114
SSN = frozenset({"ssn"})
ENGINE = PolicyEngine.preset("agent-safe")


def plan_for(sql: str, *columns: tuple[str, int], masker: Masker | None = None):
    masker = masker or Masker()
    return masker.plan_rows([ColumnInfo(n, t) for n, t in columns], ENGINE.classify(sql).lineage)


def test_derived_text_is_masked_whole_without_shape() -> None:
    plan = plan_for("select reverse(ssn), id from customers", ("reverse", TEXT), ("id", INT4))
    assert plan is not None
    assert plan.mask_values([b"6789-54-321", b"7"]) == ([b"********", b"7"], 1)
    # An e-mail's shape would show a reversed local part as the "domain": no shape at all.
    email = plan_for("select reverse(email) as email from customers", ("email", TEXT))
    assert email is not None
    assert email.mask_values([b"moc.elpmaxe@enaj"]) == ([b"********"], 1)


def test_derived_non_text_becomes_null() -> None:
    plan = plan_for(
        "select array_agg(ssn), length(ssn), row_to_json(s) from (select ssn from customers) s",
        ("array_agg", TEXT_ARRAY),
        ("length", INT4),
        ("row_to_json", JSON),
    )
    assert plan is not None
    values, n = plan.mask_values([b"{123-45-6789}", b"11", b'{"ssn": "123-45-6789"}'])
    assert values == [None, None, b'"********"'] and n == 3


def test_bare_reads_and_harmless_derivations_plan_nothing() -> None:
    assert plan_for("select id, total from orders", ("id", INT4), ("total", 1700)) is None
    assert plan_for("SELECT abalance FROM pgbench_accounts WHERE aid = $1", ("abalance", INT4)) is None
    assert plan_for("select count(ssn) from customers", ("count", 20)) is None
    assert plan_for("select sum(total) from orders", ("sum", 1700)) is None


def test_stars_head_tail_and_loose_positions() -> None:
    cols = [("id", INT4), ("note", TEXT), ("reverse", TEXT)]
    plan = plan_for("select *, reverse(ssn) from customers", *cols)
    assert plan is not None
    assert plan.mask_values([b"1", b"hello", b"6789"]) == ([b"1", b"hello", b"********"], 1)
    between = [("id", INT4), ("r", TEXT), ("total", INT4)]
    plan = plan_for("select a.*, reverse(ssn) r, b.* from customers a, orders b", *between)
    assert plan is not None
    assert plan.mask_values([b"1", b"6789", b"3"]) == ([b"1", b"********", b"3"], 1)


def test_rules_follow_the_resource_config() -> None:
    rules = NameRules(MaskingConfig(ignore_columns=["ssn"], extra_columns=["nickname"]))
    cols = [ColumnInfo("r", TEXT), ColumnInfo("n", TEXT)]
    lineage = Lineage(head=(SSN, frozenset({"nickname"})))
    assert derived_rules(cols, lineage, rules) == {1: ColumnRule.MASK}
    unknown = Lineage(head=(frozenset({"?"}), None))
    assert derived_rules(cols, unknown, NameRules(MaskingConfig())) == {0: ColumnRule.MASK}
    # A field count the lineage does not fit: every derived output is matched by name.
    odd = Lineage(head=(SSN,), named=(("r", SSN),))
    assert derived_rules(cols, odd, NameRules(MaskingConfig())) == {0: ColumnRule.MASK}


def test_plan_cache_is_keyed_by_lineage() -> None:
    masker = Masker()
    cols = [ColumnInfo("x", TEXT)]
    assert masker.plan_rows(cols) is not None  # content scan only
    derived = masker.plan_rows(cols, Lineage(head=(SSN,)))
    assert derived is not None and derived is not masker.plan_rows(cols)
    assert derived.mask_values([b"plain"]) == ([b"********"], 1)
    assert masker.plan_rows(cols).mask_values([b"plain"]) == (None, 0)


Info = CopyOptions


def test_copy_of_a_query_masks_derived_columns() -> None:
    lineage = ENGINE.classify("copy (select id, reverse(ssn) from customers) to stdout").lineage
    cols = [ColumnInfo("id", INT4), ColumnInfo("reverse", TEXT)]
    plan = Masker().plan_copy(cols, Info(), lineage)
    assert plan is not None
    data, n = plan.mask_copy_data(b"1\t6789-54-321\n")
    assert data == b"1\t********\n" and n == 1


def test_exposed_names_masked_values_stored_under_unmasked_names() -> None:
    masker = Masker()
    stored = (
        ("x.k", frozenset({"api_key", "id"})),  # masked source, plain destination: exposed
        ("x.email_copy", frozenset({"ssn"})),  # destination masked by name (*email*): reads stay masked
        ("x.n", frozenset({"id", "status"})),  # nothing masked in it
        ("t", frozenset({"?"})),  # a column the lineage could not name counts as masked
        ("t.*", frozenset({"card_number"})),
    )
    assert masker.exposed(stored) == ["x.k <- api_key", "t <- an unnamed column", "t.* <- card_number"]
    assert Masker(MaskingConfig(enabled=False)).exposed(stored) == []
