"""``grpc.aio.Metadata``: grpcio's class when installed, an equivalent otherwise."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._compat import grpc_module
from ._metadata import MetadataValue

__all__ = ["Metadata", "to_aio_metadata"]


class _Metadata:
    """Ordered multi-map of metadata; iterating yields ``(key, value)`` pairs."""

    def __init__(self, *args: tuple[str, MetadataValue]) -> None:
        self._metadata: OrderedDict[str, list[MetadataValue]] = OrderedDict()
        for key, value in args:
            self.add(key, value)

    @classmethod
    def from_tuple(cls, raw_metadata: Iterable[tuple[str, MetadataValue]] | None) -> _Metadata:
        return cls(*raw_metadata) if raw_metadata else cls()

    def add(self, key: str, value: MetadataValue) -> None:
        self._metadata.setdefault(key, []).append(value)

    def __len__(self) -> int:
        return sum(len(values) for values in self._metadata.values())

    def __getitem__(self, key: str) -> MetadataValue:
        try:
            return self._metadata[key][0]
        except (ValueError, IndexError) as e:
            raise KeyError(f"{key!r}") from e

    def __setitem__(self, key: str, value: MetadataValue) -> None:
        if key not in self:
            self._metadata[key] = [value]
        else:
            current = self._metadata[key]
            current[0] = value

    def __delitem__(self, key: str) -> None:
        del self._metadata[key]

    def delete_all(self, key: str) -> None:
        del self[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def get_all(self, key: str) -> list[MetadataValue]:
        return list(self._metadata.get(key, []))

    def set_all(self, key: str, values: list[MetadataValue]) -> None:
        self._metadata[key] = list(values)

    def __contains__(self, key: object) -> bool:
        return key in self._metadata

    def __iter__(self) -> Iterator[tuple[str, MetadataValue]]:
        for key, values in self._metadata.items():
            for value in values:
                yield (key, value)

    def keys(self) -> Iterable[str]:
        return self._metadata.keys()

    def values(self) -> list[MetadataValue]:
        return [value for _key, value in self]

    def items(self) -> list[tuple[str, MetadataValue]]:
        return list(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, self.__class__):
            return self._metadata == other._metadata
        if isinstance(other, tuple):
            return tuple(self) == other
        return NotImplemented

    def __add__(self, other: Any) -> _Metadata:
        return self.__class__(*(tuple(self) + tuple(other)))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({tuple(self)!r})"


_grpc = grpc_module()
if TYPE_CHECKING:
    Metadata = _Metadata
elif _grpc is not None:
    import grpc.aio as _grpc_aio

    Metadata = _grpc_aio.Metadata
else:
    Metadata = _Metadata


def to_aio_metadata(pairs: Iterable[tuple[str, MetadataValue]] | None) -> Metadata:
    return Metadata(*(pairs or ()))
