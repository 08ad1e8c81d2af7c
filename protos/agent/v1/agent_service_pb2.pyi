from protos.agent.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClosestLocalNodesRequest(_message.Message):
    __slots__ = ("target", "pagination")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    target: _common_pb2.NodeId
    pagination: _common_pb2.PaginationRequest
    def __init__(self, target: _Optional[_Union[_common_pb2.NodeId, _Mapping]] = ..., pagination: _Optional[_Union[_common_pb2.PaginationRequest, _Mapping]] = ...) -> None: ...

class ClosestLocalNodesResponse(_message.Message):
    __slots__ = ("node", "page")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    node: _common_pb2.NodeInfo
    page: _common_pb2.PaginationResponse
    def __init__(self, node: _Optional[_Union[_common_pb2.NodeInfo, _Mapping]] = ..., page: _Optional[_Union[_common_pb2.PaginationResponse, _Mapping]] = ...) -> None: ...

class ClaimsGetRequest(_message.Message):
    __slots__ = ("pagination",)
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    pagination: _common_pb2.PaginationRequest
    def __init__(self, pagination: _Optional[_Union[_common_pb2.PaginationRequest, _Mapping]] = ...) -> None: ...

class ClaimsGetResponse(_message.Message):
    __slots__ = ("claim", "page")
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    claim: _common_pb2.SignedClaim
    page: _common_pb2.PaginationResponse
    def __init__(self, claim: _Optional[_Union[_common_pb2.SignedClaim, _Mapping]] = ..., page: _Optional[_Union[_common_pb2.PaginationResponse, _Mapping]] = ...) -> None: ...

class CrossSignClaimRequest(_message.Message):
    __slots__ = ("initial_claim", "countersigned_claim")
    INITIAL_CLAIM_FIELD_NUMBER: _ClassVar[int]
    COUNTERSIGNED_CLAIM_FIELD_NUMBER: _ClassVar[int]
    initial_claim: _common_pb2.SignedClaim
    countersigned_claim: _common_pb2.SignedClaim
    def __init__(self, initial_claim: _Optional[_Union[_common_pb2.SignedClaim, _Mapping]] = ..., countersigned_claim: _Optional[_Union[_common_pb2.SignedClaim, _Mapping]] = ...) -> None: ...

class CrossSignClaimResponse(_message.Message):
    __slots__ = ("countersigned_claim", "counter_claim")
    COUNTERSIGNED_CLAIM_FIELD_NUMBER: _ClassVar[int]
    COUNTER_CLAIM_FIELD_NUMBER: _ClassVar[int]
    countersigned_claim: _common_pb2.SignedClaim
    counter_claim: _common_pb2.SignedClaim
    def __init__(self, countersigned_claim: _Optional[_Union[_common_pb2.SignedClaim, _Mapping]] = ..., counter_claim: _Optional[_Union[_common_pb2.SignedClaim, _Mapping]] = ...) -> None: ...

class HolePunchSignalRequest(_message.Message):
    __slots__ = ("target", "transports", "requester")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TRANSPORTS_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    target: _common_pb2.NodeId
    transports: _containers.RepeatedScalarFieldContainer[str]
    requester: _common_pb2.NodeInfo
    def __init__(self, target: _Optional[_Union[_common_pb2.NodeId, _Mapping]] = ..., transports: _Optional[_Iterable[str]] = ..., requester: _Optional[_Union[_common_pb2.NodeInfo, _Mapping]] = ...) -> None: ...

class HolePunchSignalResponse(_message.Message):
    __slots__ = ("requester_address", "target_address")
    REQUESTER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    requester_address: _common_pb2.NodeAddress
    target_address: _common_pb2.NodeAddress
    def __init__(self, requester_address: _Optional[_Union[_common_pb2.NodeAddress, _Mapping]] = ..., target_address: _Optional[_Union[_common_pb2.NodeAddress, _Mapping]] = ...) -> None: ...

class Notification(_message.Message):
    __slots__ = ("notification_id", "sender", "type", "data", "sent_at_ms")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    notification_id: bytes
    sender: _common_pb2.NodeId
    type: str
    data: bytes
    sent_at_ms: int
    def __init__(self, notification_id: _Optional[bytes] = ..., sender: _Optional[_Union[_common_pb2.NodeId, _Mapping]] = ..., type: _Optional[str] = ..., data: _Optional[bytes] = ..., sent_at_ms: _Optional[int] = ...) -> None: ...

class SignedNotification(_message.Message):
    __slots__ = ("notification", "sender_chain", "signature")
    NOTIFICATION_FIELD_NUMBER: _ClassVar[int]
    SENDER_CHAIN_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    notification: Notification
    sender_chain: _containers.RepeatedScalarFieldContainer[bytes]
    signature: bytes
    def __init__(self, notification: _Optional[_Union[Notification, _Mapping]] = ..., sender_chain: _Optional[_Iterable[bytes]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class VaultsScanRequest(_message.Message):
    __slots__ = ("pagination",)
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    pagination: _common_pb2.PaginationRequest
    def __init__(self, pagination: _Optional[_Union[_common_pb2.PaginationRequest, _Mapping]] = ...) -> None: ...

class VaultInfo(_message.Message):
    __slots__ = ("vault_id", "vault_name", "permissions")
    VAULT_ID_FIELD_NUMBER: _ClassVar[int]
    VAULT_NAME_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    vault_id: bytes
    vault_name: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vault_id: _Optional[bytes] = ..., vault_name: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ...) -> None: ...

class VaultsScanResponse(_message.Message):
    __slots__ = ("vault", "page")
    VAULT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    vault: VaultInfo
    page: _common_pb2.PaginationResponse
    def __init__(self, vault: _Optional[_Union[VaultInfo, _Mapping]] = ..., page: _Optional[_Union[_common_pb2.PaginationResponse, _Mapping]] = ...) -> None: ...

class VaultsPullRequest(_message.Message):
    __slots__ = ("vault_name",)
    VAULT_NAME_FIELD_NUMBER: _ClassVar[int]
    vault_name: str
    def __init__(self, vault_name: _Optional[str] = ...) -> None: ...

class VaultsPullResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    def __init__(self, chunk: _Optional[bytes] = ...) -> None: ...
