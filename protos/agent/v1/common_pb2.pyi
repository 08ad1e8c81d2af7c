from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SortOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SORT_ORDER_ASC: _ClassVar[SortOrder]
    SORT_ORDER_DESC: _ClassVar[SortOrder]
SORT_ORDER_ASC: SortOrder
SORT_ORDER_DESC: SortOrder

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EchoMessage(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class NodeId(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    def __init__(self, id: _Optional[bytes] = ...) -> None: ...

class NodeAddress(_message.Message):
    __slots__ = ("host", "port", "transports")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TRANSPORTS_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    transports: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., transports: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "addresses", "last_seen_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: NodeId
    addresses: _containers.RepeatedCompositeFieldContainer[NodeAddress]
    last_seen_ms: int
    def __init__(self, node_id: _Optional[_Union[NodeId, _Mapping]] = ..., addresses: _Optional[_Iterable[_Union[NodeAddress, _Mapping]]] = ..., last_seen_ms: _Optional[int] = ...) -> None: ...

class PaginationRequest(_message.Message):
    __slots__ = ("page_size", "cursor", "order")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    cursor: bytes
    order: SortOrder
    def __init__(self, page_size: _Optional[int] = ..., cursor: _Optional[bytes] = ..., order: _Optional[_Union[SortOrder, str]] = ...) -> None: ...

class PaginationResponse(_message.Message):
    __slots__ = ("next_cursor", "has_more")
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    next_cursor: bytes
    has_more: bool
    def __init__(self, next_cursor: _Optional[bytes] = ..., has_more: _Optional[bool] = ...) -> None: ...

class Claim(_message.Message):
    __slots__ = ("claim_id", "issuer", "subject", "type", "data", "issued_at_ms", "sequence_number")
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    claim_id: bytes
    issuer: NodeId
    subject: NodeId
    type: str
    data: bytes
    issued_at_ms: int
    sequence_number: int
    def __init__(self, claim_id: _Optional[bytes] = ..., issuer: _Optional[_Union[NodeId, _Mapping]] = ..., subject: _Optional[_Union[NodeId, _Mapping]] = ..., type: _Optional[str] = ..., data: _Optional[bytes] = ..., issued_at_ms: _Optional[int] = ..., sequence_number: _Optional[int] = ...) -> None: ...

class ClaimSignature(_message.Message):
    __slots__ = ("signer", "signer_chain", "signature")
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    SIGNER_CHAIN_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signer: NodeId
    signer_chain: _containers.RepeatedScalarFieldContainer[bytes]
    signature: bytes
    def __init__(self, signer: _Optional[_Union[NodeId, _Mapping]] = ..., signer_chain: _Optional[_Iterable[bytes]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SignedClaim(_message.Message):
    __slots__ = ("claim", "signatures")
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    claim: Claim
    signatures: _containers.RepeatedCompositeFieldContainer[ClaimSignature]
    def __init__(self, claim: _Optional[_Union[Claim, _Mapping]] = ..., signatures: _Optional[_Iterable[_Union[ClaimSignature, _Mapping]]] = ...) -> None: ...
