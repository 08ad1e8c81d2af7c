"""``quicshift check MODULE:SERVICER --proto FILE``: a user's own service (written here
into a temp dir) served on grpcio over TCP+TLS and on the adapter over QUIC at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

PROTO = """\
syntax = "proto3";
package shop;
message Item { string name = 1; int32 qty = 2; }
message Receipt { string text = 1; int32 total = 2; }
service Shop {
  rpc Buy (Item) returns (Receipt);
  rpc List (Item) returns (stream Receipt);
  rpc Cart (stream Item) returns (Receipt);
  rpc Haggle (stream Item) returns (stream Receipt);
  rpc Refund (Item) returns (Receipt);
}
"""

SERVICER = '''\
import grpc
import shop_pb2
import shop_pb2_grpc


class Shop(shop_pb2_grpc.ShopServicer):
    def Buy(self, request, context):
        context.send_initial_metadata((("x-shop", "open"),))
        context.set_trailing_metadata((("x-item", request.name or "nothing"),))
        return shop_pb2.Receipt(text="bought " + request.name, total=request.qty * 3)

    def List(self, request, context):
        for i in range(request.qty or 3):
            yield shop_pb2.Receipt(text=f"{request.name}#{i}", total=i)

    def Cart(self, request_iterator, context):
        items = list(request_iterator)
        return shop_pb2.Receipt(text=",".join(i.name for i in items), total=len(items))

    def Haggle(self, request_iterator, context):
        for item in request_iterator:
            yield shop_pb2.Receipt(text=item.name[::-1], total=item.qty - 1)

    def Refund(self, request, context):
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no refunds on " + request.name)


class AsyncShop(shop_pb2_grpc.ShopServicer):
    async def Buy(self, request, context):
        return shop_pb2.Receipt(text="async " + request.name)

    async def List(self, request, context):
        for i in range(2):
            yield shop_pb2.Receipt(total=i)

    async def Cart(self, request_iterator, context):
        return shop_pb2.Receipt(total=len([i async for i in request_iterator]))

    async def Haggle(self, request_iterator, context):
        async for item in request_iterator:
            yield shop_pb2.Receipt(text=item.name)

    async def Refund(self, request, context):
        await context.abort(grpc.StatusCode.NOT_FOUND, "gone")


class TransportAware(Shop):
    """Behaves differently depending on which stack serves it."""

    def Buy(self, request, context):
        stack = type(context).__module__.split(".")[0]
        return shop_pb2.Receipt(text="served by " + stack)

    def Refund(self, request, context):
        if type(context).__module__.startswith("grpc"):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no refunds")
        context.abort(grpc.StatusCode.UNAVAILABLE, "no refunds")
'''


def quicshift(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("quicshift")
    command = [script] if script else [sys.executable, "-m", "agent.cli"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [*command, "check", *args], capture_output=True, text=True, timeout=90, cwd=cwd, env=env
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")
    (tmp_path / "protos").mkdir()
    (tmp_path / "protos" / "shop.proto").write_text(PROTO)
    (tmp_path / "shop_service.py").write_text(SERVICER)
    (tmp_path / "calls.json").write_text(
        json.dumps(
            {
                "Buy": [{"name": "apple", "qty": 2}, {"name": "pear"}],
                "List": {"name": "plum", "qty": 4},
                "Cart": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
                "Haggle": [[{"name": "abc", "qty": 5}], [{"name": "x"}, {"name": "yz"}]],
            }
        )
    )
    return tmp_path


def report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_same_service_is_the_same_on_both_transports(project: Path) -> None:
    result = quicshift(project, "shop_service:Shop", "--proto", "protos/shop.proto")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "all 5 method(s) behave the same" in result.stdout
    for method in ("Buy", "List", "Cart", "Haggle", "Refund"):
        assert method in result.stdout

    result = quicshift(
        project, "shop_service:Shop", "--proto", "protos/shop.proto",
        "--calls", "calls.json", "--json",
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    data = report(result)
    assert data["same"] is True and data["service"] == "shop.Shop"
    methods = {m["method"]: m for m in data["methods"]}
    assert {m: v["calls"] for m, v in methods.items()} == {
        "Buy": 2, "List": 1, "Cart": 1, "Haggle": 2, "Refund": 1,
    }  # fmt: skip
    buy = methods["Buy"]["outcomes"][0]
    for transport in ("grpc", "quic"):
        assert buy[transport]["code"] == "OK"
        assert ["x-shop", "open"] in buy[transport]["initial_metadata"]
        assert ["x-item", "apple"] in buy[transport]["trailing_metadata"]
    assert len(methods["List"]["outcomes"][0]["quic"]["responses"]) == 4
    refund = methods["Refund"]["outcomes"][0]["quic"]
    assert refund["code"] == "FAILED_PRECONDITION" and refund["details"] == "no refunds on "


def test_async_servicer(project: Path) -> None:
    result = quicshift(project, "shop_service:AsyncShop", "--proto", "protos/shop.proto")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "all 5 method(s) behave the same" in result.stdout


def test_transport_dependent_service_is_reported(project: Path) -> None:
    result = quicshift(project, "shop_service:TransportAware", "--proto", "protos/shop.proto")
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    buy = next(i for i, line in enumerate(lines) if line.startswith("Buy "))
    assert "DIFFERENT" in lines[buy]
    assert 'grpc={text: "served by grpc"}' in lines[buy + 1]
    assert 'quic={text: "served by migration"}' in lines[buy + 1]
    assert "2 of 5 method(s) differ: Buy, Refund" in result.stdout

    data = report(
        quicshift(project, "shop_service:TransportAware", "--proto", "protos/shop.proto", "--json")
    )
    assert data["same"] is False
    methods = {m["method"]: m for m in data["methods"]}
    assert methods["List"]["same"] and methods["Cart"]["same"]
    assert methods["Refund"]["differences"] == [
        "call 1: status code grpc=FAILED_PRECONDITION quic=UNAVAILABLE"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["shop_service", "--proto", "protos/shop.proto"], "is not MODULE:SERVICER"),
        (["no_such_module:Shop", "--proto", "protos/shop.proto"], "cannot import module"),
        (["shop_service:Nope", "--proto", "protos/shop.proto"], "has no attribute 'Nope'"),
        (["shop_service:Shop", "--proto", "protos/missing.proto"], "no such file"),
        (["shop_service:Shop", "--proto", "broken.proto"], "does not compile"),
        (["shop_service:Shop", "--proto", "protos/shop.proto", "--calls", "bad.json"], "Nope"),
        (["shop_service:Shop", "--proto", "protos/shop.proto", "--timeout", "0"], "positive"),
    ],
)
def test_usage_errors(project: Path, args: list[str], message: str) -> None:
    (project / "broken.proto").write_text('syntax = "proto3";\nmessage {\n')
    (project / "bad.json").write_text(json.dumps({"Nope": {}}))
    result = quicshift(project, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stderr.startswith("quicshift check: ")


def test_missing_proto_flag_is_usage_error(project: Path) -> None:
    result = quicshift(project, "shop_service:Shop")
    assert result.returncode == 2
    assert "--proto" in result.stderr


def test_help(project: Path) -> None:
    result = quicshift(project, "--help")
    assert result.returncode == 0 and "MODULE:SERVICER" in result.stdout
