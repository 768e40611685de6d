"""The metadata text in step_finished events is one canonical spelling of the
metadata, whatever order its keys arrive in (a Struct's fields have none)."""

from __future__ import annotations

import json

from google.protobuf import struct_pb2

from server.store.convert import json_object_text, struct_to_dict


def test_same_metadata_same_text_in_any_key_order() -> None:
    forwards = {"n": None, "k": [1.0, "two"], "nested": {"b": 1, "a": 2}}
    backwards = {"nested": {"a": 2, "b": 1}, "k": [1.0, "two"], "n": None}
    assert json_object_text(forwards) == json_object_text(backwards)
    assert json_object_text(forwards) == (
        '{"k":[1.0,"two"],"n":null,"nested":{"a":2,"b":1}}'
    )


def test_text_round_trips_through_a_struct() -> None:
    struct = struct_pb2.Struct()
    struct.update({"z": "last", "a": {"y": True, "b": 2.5}})
    text = json_object_text(struct_to_dict(struct))
    assert json.loads(text) == {"a": {"b": 2.5, "y": True}, "z": "last"}
    assert text == '{"a":{"b":2.5,"y":true},"z":"last"}'


def test_no_metadata_is_empty_text() -> None:
    assert json_object_text(None) == ""
