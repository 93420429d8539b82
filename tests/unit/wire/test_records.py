"""quick_init: the same records as the dataclass's own ``__init__``, still frozen."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest

from mpa_ike.records import quick_init


def sample_class() -> Any:
    """A frozen record with every kind of field, made anew at each call."""

    @dataclass(frozen=True, slots=True)
    class Sample:
        a: int
        b: bytes = b"b"
        c: list[int] = field(default_factory=list)
        d: int = field(default=4, init=False)
        e: tuple[int, ...] = field(default_factory=tuple, init=False)
        f: str = field(default="f", kw_only=True)

    return Sample


Sample = quick_init(sample_class())
Plain = sample_class()


@quick_init
@dataclass(frozen=True, slots=True)
class Checked:
    n: int
    seen: list[int] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("negative")
        self.seen.append(self.n)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((1, b"x"), {}), ((1, b"x", [2]), {"f": "g"}), ((), {"a": 3, "c": [1]})],
)
def test_the_same_fields_as_the_dataclass_init(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    quick, plain = Sample(*args, **kwargs), Plain(*args, **kwargs)
    assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
    assert Sample(1).c is not Sample(1).c  # a fresh list from the factory each time


def test_arguments_are_checked_as_before() -> None:
    with pytest.raises(TypeError):
        Sample(1, b"x", [], "f")  # f is keyword-only
    with pytest.raises(TypeError):
        Sample()
    with pytest.raises(TypeError):
        Sample(1, d=5)  # not an __init__ field


def test_still_frozen_and_post_init_runs() -> None:
    record = Checked(2)
    assert record.seen == [2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.n = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="negative"):
        Checked(-1)
    assert dataclasses.replace(record, n=5).n == 5


def test_only_frozen_slotted_dataclasses_with_their_own_init() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclass(frozen=True, slots=True)
    class OwnInit:
        a: int

        def __init__(self, a: int) -> None:
            object.__setattr__(self, "a", a * 2)

    for cls in (NoSlots, NotFrozen, OwnInit):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)
