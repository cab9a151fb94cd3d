import contextlib
import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import wire
from protocol.wire import (
    MAX_CHUNK_BYTES,
    MAX_FRAME_BYTES,
    FrameDecoder,
    Message,
    WireError,
    decode_frame,
    encode_frame,
)

addr = st.binary(min_size=32, max_size=32)
nonce = st.integers(min_value=0, max_value=2**63 - 1)
multiaddr = st.text(max_size=60)
peer_record = st.builds(
    wire.PeerRecord, addr, st.lists(multiaddr, max_size=wire.MAX_ADDRS_PER_PEER)
)
small_content = st.binary(max_size=2048)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(wire.Ping, nonce),
    st.builds(wire.Pong, nonce, multiaddr),
    st.builds(wire.FindNode, addr),
    st.builds(wire.Nodes, st.lists(peer_record, max_size=25)),
    st.builds(wire.PutChunk, addr, small_content),
    st.builds(wire.PutAck, addr),
    st.builds(wire.GetChunk, addr),
    st.builds(wire.Chunk, addr, small_content),
    st.builds(wire.NotFound, addr),
    st.builds(wire.Error, st.sampled_from(list(wire.ErrorCode)), st.text(max_size=100)),
    st.builds(wire.Offer, st.lists(addr, max_size=20)),
    st.builds(wire.OfferAck, st.integers(min_value=0, max_value=2**32)),
)


@given(messages)
def test_round_trip(message: Message) -> None:
    assert decode_frame(encode_frame(message)) == message


@given(st.lists(messages, min_size=1, max_size=5), st.integers(min_value=1, max_value=64))
def test_stream_decoder_reassembles_any_split(batch: list[Message], step: int) -> None:
    stream = b"".join(encode_frame(m) for m in batch)
    decoder = FrameDecoder()
    out: list[Message] = []
    for i in range(0, len(stream), step):
        out += decoder.feed(stream[i : i + step])
    assert out == batch
    assert decoder.buffered == 0


def test_full_size_chunk_fits_in_a_frame() -> None:
    message = wire.Chunk(bytes(32), bytes(MAX_CHUNK_BYTES))
    frame = encode_frame(message)
    assert len(frame) <= MAX_FRAME_BYTES
    assert decode_frame(frame) == message


def test_chunk_over_4_mib_is_rejected_on_decode() -> None:
    body = msgspec.msgpack.encode(["chunk", bytes(32), bytes(MAX_CHUNK_BYTES + 1)])
    frame = struct.pack(">IB", len(body) + 1, wire.WIRE_VERSION) + body
    with pytest.raises(WireError, match="invalid message"):
        decode_frame(frame)


def test_oversized_frame_is_rejected_from_its_header_alone() -> None:
    decoder = FrameDecoder()
    with pytest.raises(WireError, match="exceeds the limit"):
        decoder.feed(struct.pack(">IB", MAX_FRAME_BYTES, wire.WIRE_VERSION))


def test_encoding_an_oversized_message_is_refused() -> None:
    with pytest.raises(WireError, match="exceeds the limit"):
        encode_frame(wire.Chunk(bytes(32), bytes(MAX_FRAME_BYTES)))


def test_unknown_tag_is_a_wire_error() -> None:
    body = msgspec.msgpack.encode(["launch_missiles", 1])
    with pytest.raises(WireError, match="launch_missiles"):
        decode_frame(struct.pack(">IB", len(body) + 1, wire.WIRE_VERSION) + body)


def test_wrong_version_is_a_wire_error() -> None:
    frame = bytearray(encode_frame(wire.Ping(1)))
    frame[4] = 99
    with pytest.raises(WireError, match="version 99"):
        decode_frame(bytes(frame))


def test_short_address_is_a_wire_error() -> None:
    body = msgspec.msgpack.encode(["get_chunk", bytes(31)])
    with pytest.raises(WireError):
        decode_frame(struct.pack(">IB", len(body) + 1, wire.WIRE_VERSION) + body)


def test_too_many_peers_in_a_reply_is_a_wire_error() -> None:
    record = [bytes(32), []]
    body = msgspec.msgpack.encode(["nodes", [record] * (wire.MAX_PEERS_PER_REPLY + 1)])
    with pytest.raises(WireError):
        decode_frame(struct.pack(">IB", len(body) + 1, wire.WIRE_VERSION) + body)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_raise_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        FrameDecoder().feed(data)


@settings(max_examples=500)
@given(messages, st.data())
def test_fuzz_mutated_frames_only_raise_wire_error(message: Message, data: st.DataObject) -> None:
    frame = bytearray(encode_frame(message))
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(min_value=0, max_value=max(len(frame) - 1, 0)))
        if kind == "flip" and frame:
            frame[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
        elif kind == "insert":
            frame.insert(pos, data.draw(st.integers(min_value=0, max_value=255)))
        elif kind == "delete" and frame:
            del frame[pos]
        else:
            del frame[pos:]
    with contextlib.suppress(WireError):
        decode_frame(bytes(frame))


# --- storage audits ------------------------------------------------------------------


def frame_of(body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, wire.WIRE_VERSION) + body


def test_storage_challenge_round_trip_and_limits() -> None:
    nonce_ = bytes(range(32))
    addresses = [bytes([n]) * 32 for n in range(wire.MAX_CHALLENGE_ADDRESSES)]
    message = wire.StorageChallenge(nonce_, addresses)
    assert decode_frame(encode_frame(message)) == message
    for bad in (
        wire.StorageChallenge(nonce_, [*addresses, bytes(32)]),  # 65 addresses
        wire.StorageChallenge(bytes(31), addresses[:1]),
        wire.StorageChallenge(bytes(33), addresses[:1]),
        wire.StorageChallenge(nonce_, []),
        wire.StorageChallenge(nonce_, [bytes(31)]),
    ):
        with pytest.raises(WireError):
            decode_frame(encode_frame(bad))


def test_storage_answers_limits() -> None:
    ok = wire.StorageAnswers([bytes(32), b"", b"\x00"])
    assert decode_frame(encode_frame(ok)) == ok
    assert decode_frame(encode_frame(wire.StorageAnswers([]))) == wire.StorageAnswers([])
    for bad in (
        wire.StorageAnswers([bytes(33)]),
        wire.StorageAnswers([bytes(32)] * (wire.MAX_CHALLENGE_ADDRESSES + 1)),
    ):
        with pytest.raises(WireError):
            decode_frame(encode_frame(bad))


def test_nodes_without_shunned_still_decodes() -> None:
    record = [bytes(32), ["/ip4/1.2.3.4/udp/1/quic-v1"]]
    decoded = decode_frame(frame_of(msgspec.msgpack.encode(["nodes", [record]])))
    assert isinstance(decoded, wire.Nodes)
    assert decoded.shunned == []
    assert decoded.peers == [wire.PeerRecord(bytes(32), ["/ip4/1.2.3.4/udp/1/quic-v1"])]
    shunned = wire.Nodes([], [bytes([1]) * 32])
    assert decode_frame(encode_frame(shunned)) == shunned


def test_nodes_naming_too_many_shunned_is_a_wire_error() -> None:
    too_many = [bytes([n]) * 32 for n in range(wire.MAX_SHUNNED_PER_REPLY + 1)]
    with pytest.raises(WireError):
        decode_frame(encode_frame(wire.Nodes([], too_many)))


def test_replies_are_declared_once_per_request() -> None:
    from protocol.wire import REPLIES, is_reply_to

    assert wire.Ping in REPLIES
    assert is_reply_to(wire.Ping(1), wire.Pong(1))
    assert is_reply_to(wire.Ping(1), wire.Error(wire.ErrorCode.BUSY))
    assert not is_reply_to(wire.Ping(1), wire.Ok())
    assert not is_reply_to(wire.Ok(), wire.Ok()), "what is no request has no reply"
