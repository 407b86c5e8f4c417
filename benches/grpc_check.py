#!/usr/bin/env python3
"""Writes one Envoy ext_authz CheckRequest as a gRPC message (5-byte prefix +
protobuf) for h2load's -d: attributes.request.http with method POST, the
bearer token given as argv[1], path /rpc, host node.test. Field numbers from
envoy/service/auth/v3/{attribute_context,external_auth}.proto."""
import struct
import sys


def varint(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(tag: int, payload: bytes) -> bytes:
    return varint((tag << 3) | 2) + varint(len(payload)) + payload


def entry(k: str, v: str) -> bytes:
    return field(1, k.encode()) + field(2, v.encode())


token = sys.argv[1]
# HttpRequest: method = 2, headers = 3 (map), path = 4, host = 5.
http = (
    field(2, b"POST")
    + field(3, entry("authorization", "Bearer " + token))
    + field(4, b"/rpc")
    + field(5, b"node.test")
)
# CheckRequest.attributes = 1; AttributeContext.request = 4; Request.http = 2.
msg = field(1, field(4, field(2, http)))
sys.stdout.buffer.write(b"\x00" + struct.pack(">I", len(msg)) + msg)
