"""The description of a slice: argument models, result adapters, schemas, validation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from aether import slices
from aether.slices.describe import BadArguments, describe_slice


class Item(BaseModel):
    sku: str
    price_cents: int


@slices.slice
class Catalog:
    def __init__(self) -> None:
        self.items: dict[str, Item] = {}

    @slices.entry(idempotent=True)
    async def price(self, sku: str, currency: str = "EUR") -> Item:
        return Item(sku=sku, price_cents=1)

    @slices.entry(name="put")
    def put_item(self, item: Item) -> None:
        self.items[item.sku] = item

    @slices.entry
    @slices.batch(max_size=8, max_wait_ms=5)
    async def score(self, skus: list[str]) -> list[float]:
        return [1.0 for _ in skus]

    def helper(self) -> None:
        """Not an entry point."""


@slices.slice(name="hello")
def greet(name: str, times: int = 1) -> str:
    return name * times


def test_a_service_slice_lists_its_marked_methods() -> None:
    spec = describe_slice(Catalog)
    assert spec.name == "catalog"
    assert not spec.lean
    assert set(spec.entries) == {"price", "put", "score"}
    assert spec.entries["price"].idempotent
    assert spec.entries["price"].is_async
    assert not spec.entries["put"].is_async
    assert spec.entries["put"].attr == "put_item"


def test_a_lean_slice_is_its_function() -> None:
    spec = describe_slice(greet)
    assert spec.name == "hello"
    assert spec.lean
    assert list(spec.entries) == ["greet"]


def test_positional_arguments_are_bound_by_name_and_defaults_filled() -> None:
    price = describe_slice(Catalog).entries["price"]
    assert price.arguments(["tea"], {}) == {"sku": "tea", "currency": "EUR"}
    assert price.arguments([], {"sku": "tea", "currency": "USD"}) == {
        "sku": "tea",
        "currency": "USD",
    }


def test_models_are_validated_from_json() -> None:
    put = describe_slice(Catalog).entries["put"]
    arguments = put.arguments([], {"item": {"sku": "tea", "price_cents": "450"}})
    assert arguments["item"] == Item(sku="tea", price_cents=450)


@pytest.mark.parametrize(
    ("args", "kwargs", "where"),
    [
        ([], {"sku": 5}, ["sku"]),
        ([], {}, ["sku"]),
        ([], {"sku": "tea", "colour": "red"}, ["colour"]),
    ],
)
def test_wrong_arguments_are_refused_with_pydantic_errors(
    args: list[Any], kwargs: dict[str, Any], where: list[str]
) -> None:
    price = describe_slice(Catalog).entries["price"]
    with pytest.raises(BadArguments) as caught:
        price.arguments(args, kwargs)
    assert [error["loc"] for error in caught.value.details] == [where]
    assert all(isinstance(error["msg"], str) for error in caught.value.details)


def test_too_many_or_doubled_arguments_are_refused() -> None:
    price = describe_slice(Catalog).entries["price"]
    with pytest.raises(BadArguments):
        price.arguments(["tea", "EUR", "extra"], {})
    with pytest.raises(BadArguments):
        price.arguments(["tea"], {"sku": "tea"})


def test_a_batched_entry_is_described_per_call() -> None:
    score = describe_slice(Catalog).entries["score"]
    assert score.batch is not None and score.batch.max_size == 8
    assert score.arguments(["tea"], {}) == {"skus": "tea"}
    with pytest.raises(BadArguments):
        score.arguments([["tea"]], {})
    described = score.describe()
    assert described["params"]["properties"]["skus"]["type"] == "string"
    assert described["returns"] == {"type": "number"}
    assert described["batch"] == {"max_size": 8, "max_wait_ms": 5}


def test_describe_gives_json_schemas() -> None:
    described = describe_slice(Catalog).describe()
    assert described["slice"] == "catalog"
    assert described["lean"] is False
    price = described["entries"]["price"]
    assert price["params"]["required"] == ["sku"]
    assert price["returns"]["properties"]["price_cents"]["type"] == "integer"
    assert price["idempotent"] is True
    assert price["batch"] is None
    assert described["entries"]["put"]["returns"] == {"type": "null"}


def test_results_are_dumped_as_json() -> None:
    price = describe_slice(Catalog).entries["price"]
    assert price.result(Item(sku="tea", price_cents=3)) == {"sku": "tea", "price_cents": 3}


def test_what_is_not_a_slice_is_refused() -> None:
    class Plain:
        pass

    with pytest.raises(TypeError):
        describe_slice(Plain)

    @slices.slice
    class Empty:
        pass

    with pytest.raises(TypeError, match=r"no @slices\.entry"):
        describe_slice(Empty)

    @slices.slice
    def varargs(*names: str) -> None:
        pass

    with pytest.raises(TypeError, match="named parameters"):
        describe_slice(varargs)


def test_batch_needs_a_size() -> None:
    with pytest.raises(ValueError):
        slices.batch(max_size=0, max_wait_ms=1)


def test_parameter_names_pydantic_reserves_still_work() -> None:
    @slices.slice
    def lookup(schema: str, model_id: int, _hint: int = 3, json: bool = False) -> int:
        return 1

    spec = describe_slice(lookup).entries["lookup"]
    assert spec.arguments(["s", 2], {"json": True}) == {
        "schema": "s",
        "model_id": 2,
        "_hint": 3,
        "json": True,
    }
    assert set(spec.describe()["params"]["properties"]) == {"schema", "model_id", "_hint", "json"}
    with pytest.raises(BadArguments) as caught:
        spec.arguments([], {"schema": "s", "model_id": "x"})
    assert [error["loc"] for error in caught.value.details] == [["model_id"]]
