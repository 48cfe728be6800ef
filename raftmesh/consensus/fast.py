"""``fast_init``: a quicker ``__init__`` for the frozen, slotted dataclasses apply makes per task.

A frozen dataclass's generated ``__init__`` sets each field with ``object.__setattr__(self, name,
value)``, which looks the attribute up on the type every time: ~0.3-0.4 us a field. Apply builds
several such objects per task (a decoded ``TaskSpec`` has 22 fields; a ``TaskChanged`` event for
each status change; a ``Completion`` per reported result), so in the profile of a 10,000-task
submit the specs' ``__init__`` was about half of decoding them. The ``__init__`` made here takes
the same arguments (same names, order, defaults and keyword-only fields) and sets each slot
through its member descriptor, bound once. It stays frozen: assignment still raises.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def fast_init(cls: type[T]) -> type[T]:
    """Replace the ``__init__`` of ``cls`` (a ``@dataclass(frozen=True, slots=True)`` with no
    ``__post_init__``, ``InitVar`` or ``default_factory``) by one that sets its slots directly."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: fast_init is for frozen, slotted dataclasses")
    if hasattr(cls, "__post_init__") or any(
        f.default_factory is not dataclasses.MISSING or not f.init for f in fields
    ):
        raise TypeError(
            f"{cls.__name__}: fields with a factory, init=False or __post_init__ need the dataclass __init__"
        )
    ns: dict[str, Any] = {}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for i, f in enumerate(fields):
        arg = f.name
        if f.default is not dataclasses.MISSING:
            ns[f"_d{i}"] = f.default
            arg = f"{f.name}=_d{i}"
        (keyword if f.kw_only else positional).append(arg)
        ns[f"_s{i}"] = _slot(cls, f.name).__set__
        body.append(f"    _s{i}(self, {f.name})")
    args = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({args}) -> None:\n" + ("\n".join(body) or "    pass") + "\n"
    exec(source, ns)  # built from the dataclass's own field names, as dataclasses does
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.fast_init = True  # what tests check
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


def _slot(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        d = klass.__dict__.get(name)
        if d is not None and hasattr(d, "__set__") and name in getattr(klass, "__slots__", ()):
            return d
    raise TypeError(f"{cls.__name__}.{name} is not a slot")
