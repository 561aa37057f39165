from __future__ import annotations

import pytest

from broker.masking import (
    ColumnInfo,
    CopyPlan,
    Masker,
    MaskingConfig,
    MaskingError,
    MaskingRefused,
)
from broker.masking.copyout import BinaryCopyPlan, CsvCopyPlan, TextCopyPlan
from tests.broker.masking.copy_info import CopyOptions

TEXT, INT4 = 25, 23


Info = CopyOptions


COLUMNS = [ColumnInfo("id", INT4), ColumnInfo("email", TEXT)]


def test_default_masker_and_plan_cache() -> None:
    masker = Masker()
    assert masker.config == MaskingConfig()
    a = masker.plan_rows(COLUMNS)
    assert a is not None
    assert masker.plan_rows(list(COLUMNS)) is a  # same shape, same (stateless) plan


def test_plan_copy_by_format() -> None:
    masker = Masker()
    assert isinstance(masker.plan_copy(COLUMNS, Info()), TextCopyPlan)
    assert isinstance(masker.plan_copy(COLUMNS, Info(format="csv", delimiter=",")), CsvCopyPlan)
    plan = masker.plan_copy(COLUMNS, Info(format="binary"))
    assert isinstance(plan, BinaryCopyPlan) and isinstance(plan, CopyPlan)


def test_copy_plans_are_fresh_each_time() -> None:
    masker = Masker()
    assert masker.plan_copy(COLUMNS, Info()) is not masker.plan_copy(COLUMNS, Info())


def test_copy_with_nothing_to_mask_or_other_directions_gives_no_plan() -> None:
    masker = Masker()
    assert masker.plan_copy([ColumnInfo("id", INT4)], Info()) is None
    assert masker.plan_copy(COLUMNS, Info(direction="from_stdin")) is None
    assert Masker(MaskingConfig(enabled=False)).plan_copy(COLUMNS, Info()) is None


def test_copy_options_default_when_left_empty() -> None:
    plan = Masker().plan_copy(COLUMNS, Info(format="csv", delimiter="", quote="", escape=""))
    assert plan is not None
    assert plan.mask_copy_data(b'1,"jane@example.com"\n') == (b'1,"j***@example.com"\n', 1)


@pytest.mark.parametrize(
    ("columns", "info", "message"),
    [
        ([], Info(), "column names are unknown"),
        (COLUMNS, Info(columns=("a",)), "differ"),
        (COLUMNS, Info(format="parquet"), "format 'parquet'"),
        (COLUMNS, Info(delimiter="§"), "single ASCII"),
        (COLUMNS, Info(delimiter="ab"), "single ASCII"),
        (COLUMNS, Info(delimiter="\n"), "line break"),
        (COLUMNS, Info(delimiter="\\"), "ambiguous"),
        (COLUMNS, Info(delimiter="n"), "ambiguous"),
        (COLUMNS, Info(null="a\tb"), "NULL string"),
        (COLUMNS, Info(format="csv", delimiter=",", quote=","), "must differ"),
        (COLUMNS, Info(format="csv", delimiter=",", null='"'), "NULL string"),
        (COLUMNS, Info(format="csv", delimiter=",", quote="«"), "single ASCII"),
    ],
)
def test_unsafe_copy_is_refused(columns: list[ColumnInfo], info: Info, message: str) -> None:
    with pytest.raises(MaskingRefused, match=message) as caught:
        Masker().plan_copy(columns, info)
    assert isinstance(caught.value, MaskingError)


def test_copy_columns_are_planned_in_the_copy_format() -> None:
    # Column formats from the caller do not matter: COPY's own format decides.
    plan = Masker().plan_copy([ColumnInfo("email", TEXT, 1)], Info(format="text"))
    assert plan is not None
    assert plan.mask_copy_data(b"jane@example.com\n") == (b"j***@example.com\n", 1)
