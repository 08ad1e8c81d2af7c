"""The call state machine, tested by walking its tables."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from quic_rpc.rpc import (
    CallInput,
    CallKind,
    CallStateMachine,
    LocalProtocolError,
    RemoteProtocolError,
    RequestState,
    ResponseState,
    Role,
)
from quic_rpc.rpc.call_state import REQUEST_TABLE, RESPONSE_INITIAL, RESPONSE_TABLE, header_input

TERMINAL_REQUEST = {RequestState.CLOSED, RequestState.RESET}
TERMINAL_RESPONSE = {ResponseState.CLOSED, ResponseState.RESET}


def _reachable(table: Mapping[tuple[Any, CallInput], Any], starts: set[Any]) -> set[Any]:
    seen = set(starts)
    frontier = list(starts)
    while frontier:
        state = frontier.pop()
        for (src, _), dst in table.items():
            if src == state and dst not in seen:
                seen.add(dst)
                frontier.append(dst)
    return seen


def test_every_state_is_reachable_and_terminals_are_final() -> None:
    assert _reachable(REQUEST_TABLE, {RequestState.IDLE}) == set(RequestState)
    starts = {ResponseState.NOT_STARTED, *RESPONSE_INITIAL.values()}
    assert _reachable(RESPONSE_TABLE, starts) == set(ResponseState)
    for request_src, _ in REQUEST_TABLE:
        assert request_src not in TERMINAL_REQUEST
    for response_src, _ in RESPONSE_TABLE:
        assert response_src not in TERMINAL_RESPONSE


@pytest.mark.parametrize(("state", "event"), list(itertools.product(RequestState, CallInput)))
def test_request_table_cell(state: RequestState, event: CallInput) -> None:
    """Every cell of the request table: the server (receiving) and the client (sending)."""
    expected = REQUEST_TABLE.get((state, event))
    for role, error in ((Role.SERVER, RemoteProtocolError), (Role.CLIENT, LocalProtocolError)):
        machine = CallStateMachine(role)
        machine.request = state
        step = machine.receive if role is Role.SERVER else machine.send
        if expected is None:
            with pytest.raises(error):
                step(event)
            assert machine.request is state
        else:
            step(event)
            assert machine.request is expected


@pytest.mark.parametrize(("state", "event"), list(itertools.product(ResponseState, CallInput)))
def test_response_table_cell(state: ResponseState, event: CallInput) -> None:
    expected = RESPONSE_TABLE.get((state, event))
    for role, error in ((Role.CLIENT, RemoteProtocolError), (Role.SERVER, LocalProtocolError)):
        machine = CallStateMachine(role)
        machine.response = state
        step = machine.receive if role is Role.CLIENT else machine.send
        if expected is None:
            with pytest.raises(error):
                step(event)
            assert machine.response is state
        else:
            step(event)
            assert machine.response is expected


@pytest.mark.parametrize("kind", list(CallKind))
def test_start_sets_both_directions(kind: CallKind) -> None:
    machine = CallStateMachine(Role.SERVER)
    machine.start(kind)
    assert machine.kind is kind
    assert machine.request is REQUEST_TABLE[(RequestState.IDLE, header_input(kind))]
    assert machine.response is RESPONSE_INITIAL[kind]
    with pytest.raises(RemoteProtocolError):
        machine.start(kind)  # a second header


def test_unary_happy_path_both_roles() -> None:
    client = CallStateMachine(Role.CLIENT)
    server = CallStateMachine(Role.SERVER)
    client.start(CallKind.UNARY)
    server.start(CallKind.UNARY)
    for event in (CallInput.MESSAGE, CallInput.REQUEST_END):
        client.send(event)
        server.receive(event)
    for event in (CallInput.RESPONSE_HEADER, CallInput.MESSAGE, CallInput.TRAILER):
        server.send(event)
        client.receive(event)
    assert client.response is ResponseState.TRAILED
    with pytest.raises(RemoteProtocolError):
        client.receive(CallInput.MESSAGE)  # nothing after the trailer but EOF
    client.receive(CallInput.EOF)
    assert client.response.value == ResponseState.CLOSED.value


def test_single_request_kinds_reject_a_second_message() -> None:
    server = CallStateMachine(Role.SERVER)
    server.start(CallKind.SERVER_STREAMING)
    server.receive(CallInput.MESSAGE)
    with pytest.raises(RemoteProtocolError):
        server.receive(CallInput.MESSAGE)
