"""Hypothesis strategies for API requests: any message built field by field
from its descriptor, with values near and beyond every limit."""

from __future__ import annotations

import string
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from server.validation import MAX_SECONDS, MIN_SECONDS

ID_CHARS = string.ascii_letters + string.digits + "._:-"
SIZES = (0, 1, 50, 51, 100, 101, 128, 129, 200, 201, 256, 257, 2001, 8193, 32769)

ids = st.text(ID_CHARS, min_size=1, max_size=12)
texts = st.one_of(
    ids,
    st.text(max_size=20),
    st.builds(lambda n, c: c * n, st.sampled_from(SIZES), st.sampled_from("xé🙂")),
)
ints = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([100_000_000, 100_000_001, 2**31 - 1, -(2**31)]),
)
floats = st.one_of(
    st.floats(-1, 3),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e7, 1e-9]),
)
timestamps = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.one_of(
        st.integers(1_700_000_000, 1_800_000_000),
        st.sampled_from([MIN_SECONDS - 1, MAX_SECONDS + 1, MIN_SECONDS, 0]),
    ),
    nanos=st.one_of(st.just(0), st.integers(0, 999_999_999), st.just(-1)),
)


def structs() -> st.SearchStrategy[struct_pb2.Struct]:
    def build(values: dict[str, Any]) -> struct_pb2.Struct:
        struct = struct_pb2.Struct()
        struct.update(values)
        return struct

    leaves = st.one_of(st.text(max_size=5), st.integers(-5, 5), st.booleans())
    return st.one_of(
        st.dictionaries(st.text(max_size=5), leaves, max_size=3).map(build),
        st.just(build({"blob": "x" * 70_000})),
    )


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return texts
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return floats
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-1, len(field.enum_type.values) + 1)
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
        return ints
    raise NotImplementedError(field.full_name)


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Any:
    """A message of ``descriptor`` with a random subset of fields set."""
    from google.protobuf import message_factory

    message = message_factory.GetMessageClass(descriptor)()
    oneofs_done: set[str] = set()
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and (oneof.name in oneofs_done or not draw(st.booleans())):
            continue
        if oneof is None and not draw(st.booleans()):
            continue
        if oneof is not None:
            oneofs_done.add(oneof.name)
        repeated = field.is_repeated
        count = draw(st.integers(0, 3)) if repeated else 1
        for _ in range(count):
            value = _value(draw, field, depth)
            if value is None:
                continue
            if repeated and field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, field.name).add().CopyFrom(value)
            elif repeated:
                getattr(message, field.name).append(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, field.name).CopyFrom(value)
            else:
                setattr(message, field.name, value)
    return message


def _value(draw: st.DrawFn, field: FieldDescriptor, depth: int) -> Any:
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return draw(_scalar(field))
    name = field.message_type.full_name
    if name == "google.protobuf.Timestamp":
        return draw(timestamps)
    if name == "google.protobuf.Struct":
        return draw(structs())
    if depth >= 2:
        return None
    return draw(messages(field.message_type, depth + 1))
