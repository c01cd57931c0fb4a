"""quick_init: the same frozen records as the dataclass-generated __init__, built faster."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import dataclass

import pytest

from operators.ensemble import Decision
from schemas.bars import Bar
from schemas.decisions import BarDecision, Verdict
from schemas.features import FeatureVector
from schemas.records import quick_init
from schemas.signals import Action, Signal, Vote


def _pair() -> tuple[type, type]:
    """One record definition, with the dataclass __init__ and with quick_init's."""

    def define() -> type:
        @dataclass(frozen=True, slots=True)
        class Rec:
            name: str
            size: float
            tags: tuple[str, ...] = ()
            live: bool = True

        return Rec

    return define(), quick_init(define())


def test_the_same_instances_as_the_dataclass_init() -> None:
    plain, quick = _pair()
    for args, kwargs in [
        (("a", 1.5), {}),
        (("a", 1.5, ("x",)), {"live": False}),
        ((), {"size": 2.0, "name": "b"}),
    ]:
        p, q = plain(*args, **kwargs), quick(*args, **kwargs)
        assert dataclasses.astuple(p) == dataclasses.astuple(q)
        assert repr(p).replace("Rec", "") == repr(q).replace("Rec", "")
        assert hash(q) == hash(quick(*args, **kwargs)) and q == quick(*args, **kwargs)
    assert inspect.signature(plain) == inspect.signature(quick)
    q = quick("a", 1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.size = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'size'"):
        quick("a")
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        quick("a", 1.0, colour="red")


def test_records_that_do_more_than_store_are_refused() -> None:
    @dataclass(slots=True)
    class NotFrozen:
        x: int

    @dataclass(frozen=True, slots=True)
    class Factory:
        x: list = dataclasses.field(default_factory=list)

    @dataclass(frozen=True, slots=True)
    class Post:
        x: int

        def __post_init__(self) -> None:
            pass

    for cls in (NotFrozen, Factory, Post):
        with pytest.raises(TypeError):
            quick_init(cls)


@pytest.mark.parametrize("cls", [Vote, Signal, Bar, FeatureVector, Verdict, BarDecision, Decision])
def test_the_hot_records_use_it(cls: type) -> None:
    """Every field stored, in order, defaults applied (Vote.failed)."""
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    assert "_set_" in cls.__init__.__code__.co_names[0]
    names = [f.name for f in dataclasses.fields(cls)]
    assert list(inspect.signature(cls).parameters) == names
    vote = Vote("m", "v1", Action.BUY, 0.7)
    assert vote.failed is False and pickle.loads(pickle.dumps(vote, protocol=5)) == vote
