"""Frozen dataclasses that cost half as much to build.

A set-up builds thousands of frozen records (headers, payloads, transforms, events),
and a frozen dataclass's generated ``__init__`` stores each field through
``object.__setattr__``, to get past its own ``__setattr__``, which refuses. A slotted
class's fields are member descriptors whose ``__set__`` stores the value directly:
:func:`quick_init` gives a frozen, slotted dataclass an ``__init__`` that calls those,
with the same signature, defaults, default factories, keyword-only fields and
``__post_init__``. The record stays frozen.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["quick_init"]

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """Put on top of ``@dataclass(frozen=True, slots=True)``."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: quick_init takes a frozen, slotted dataclass")
    if not params.init or cls.__init__.__code__.co_filename != "<string>":
        raise TypeError(f"{cls.__name__}: quick_init replaces only a generated __init__")
    scope: dict[str, Any] = {"_MISSING": dataclasses.MISSING}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = field.name
        scope[f"_set_{name}"] = getattr(cls, name).__set__
        scope[f"_default_{name}"] = field.default
        scope[f"_factory_{name}"] = field.default_factory
        value = _initial_value(field)
        if field.init:
            (keyword if field.kw_only else positional).append(_parameter(field))
        elif value == name:
            continue  # neither given nor defaulted: left unset, as dataclasses does
        body.append(f"_set_{name}(self, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    parameters = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    lines = "".join(f"    {line}\n" for line in body or ["pass"])
    exec(f"def __init__({parameters}):\n{lines}", scope)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


def _parameter(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        return f"{field.name}=_default_{field.name}"
    if field.default_factory is not dataclasses.MISSING:
        return f"{field.name}=_MISSING"
    return field.name


def _initial_value(field: dataclasses.Field[Any]) -> str:
    """The expression the field gets: its argument, its default or its factory's value."""
    name = field.name
    factory = field.default_factory is not dataclasses.MISSING
    if field.init:
        return f"_factory_{name}() if {name} is _MISSING else {name}" if factory else name
    if field.default is not dataclasses.MISSING:
        return f"_default_{name}"
    return f"_factory_{name}()" if factory else name
