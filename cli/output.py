"""What the commands print: proto3 JSON with the proto's field names, as grpcurl prints it, so
that every command prints alike."""

from __future__ import annotations

import json

from google.protobuf import json_format
from google.protobuf.message import Message


def to_json(message: Message, indent: int | None = None) -> str:
    """The proto3 JSON form: the proto's field names (``supporters_by_org``), int64 values as
    strings, zeros and empty maps included."""
    return json.dumps(
        json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        ),
        indent=indent,
        sort_keys=True,
    )
