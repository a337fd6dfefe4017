"""What the commands print: campaign figures as proto3 JSON, so that `get` and `dump` print
them alike."""

from __future__ import annotations

import json

from google.protobuf import json_format
from google.protobuf.message import Message


def to_json(message: Message, indent: int | None = None) -> str:
    """The proto3 JSON form, zeros and empty maps included."""
    return json.dumps(
        json_format.MessageToDict(message, always_print_fields_with_no_presence=True),
        indent=indent,
        sort_keys=True,
    )
