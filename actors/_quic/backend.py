"""qh3 and aioquic behind one small interface.

Both stacks expose the same sans-IO ``QuicConnection`` (aioquic's API; qh3 is its
maintained fork), but their event classes differ, and neither publishes two things
the node reports: the key-exchange group TLS negotiated, and the certificate the
client received. ``QuicConnectionAdapter`` hides those differences:

- events are translated into the small dataclasses below;
- the negotiated group: a client records the group of the ServerHello it processes
  (the TLS context's ``_client_handle_hello`` is wrapped per connection and the hello
  re-parsed with the stack's own ``pull_server_hello``); a server reads which
  key-exchange private key its TLS context created (both stacks create only the one
  of the group they chose);
- the server certificate as this connection saw it: qh3 ``get_peercert()``, aioquic
  the TLS context's parsed peer certificate.

qh3 fix ("reserved stream is missing"): qh3's native core builds packets
transactionally. A stream frame (new data, a retransmission or PTO probe copy of
data, a RESET_STREAM or a STOP_SENDING) is first *reserved*; when the congestion
window closes before the frame is sent, the reservation waits in the core until the
next ``poll_transmit`` with room. Independently, popping a ``stream_finished`` event
from the core removes that stream. If a stream finishes while one of its frames is
reserved (typically: a probe copy or retransmission of a reply waits, and the ACK
of the original then completes the stream), the next ``poll_transmit`` fails with
``ValueError: reserved stream is missing`` after it has already consumed the built
packet, which leaves the connection unusable. ``_Qh3Connection`` therefore pops the
core's events only when no reservation can be waiting: a reservation waits only
after a ``poll_transmit`` that found the congestion window full, so events are held
(left in the core, streams not removed) from a ``datagrams_to_send`` that ends with
less than one datagram of window until one that ends with more.

Interop fix: aioquic 1.7 pads a client's Initial datagram with zero bytes *after*
the Initial packet; a qh3 2.1 server then fails with "packet builder capacity
exhausted" on its first flight. The aioquic backend installs a packet builder that
pads inside the Initial packet instead (PADDING frames, as RFC 9000 14.1 allows).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import ssl
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from qh3 import tls as qh3_tls
from qh3._hazmat import Buffer as Qh3Buffer
from qh3._hazmat import Certificate as Qh3Certificate
from qh3.quic import events as qh3_events
from qh3.quic.configuration import QuicConfiguration as Qh3Configuration
from qh3.quic.connection import QuicConnection as Qh3Connection

QuicStack = Literal["qh3", "aioquic"]
ALPN: Final = "autonomi-actors/1"
CONNECTION_ID_BYTES: Final = 8
MAX_DATAGRAM_FRAME_BYTES: Final = 65536
"""Accepted DATAGRAM frame size (the frame must still fit one packet)."""
RELAYED_DATAGRAM_SIZE: Final = 1250
"""UDP payload size of a connection carried through a relay: its datagrams travel
inside DATAGRAM frames of a 1350-byte outer packet (about 40 bytes of outer header,
frame header, circuit id and AEAD tag)."""

GROUP_NAMES: Final[dict[int, str]] = {
    0x11EC: "X25519MLKEM768",
    0x001D: "x25519",
    0x001E: "x448",
    0x0017: "secp256r1",
    0x0018: "secp384r1",
    0x0019: "secp521r1",
}
POST_QUANTUM_GROUPS: Final = frozenset({0x11EC})
QH3_PMTU_PROBE_LIMIT: Final = 1472
"""The largest datagram qh3's client-side path MTU discovery goes up to (IPv4)."""
_CURVE_GROUPS: Final = {"secp256r1": 0x0017, "secp384r1": 0x0018, "secp521r1": 0x0019}

SocketAddress = tuple[str, int]
log = logging.getLogger("actors.transport")


def group_name(group: int | None) -> str:
    if group is None:
        return "unknown"
    return GROUP_NAMES.get(group, f"0x{group:04x}")


# -- certificate ---------------------------------------------------------------------


@dataclass(frozen=True)
class TlsCertificate:
    """A throw-away self-signed ECDSA P-256 certificate (both stacks accept it; qh3's
    default signature algorithms leave out Ed25519)."""

    der: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> TlsCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "autonomi-actors node")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(certificate.public_bytes(serialization.Encoding.DER), key_pem)

    @cached_property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.der).digest()


# -- events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The TLS handshake inside QUIC completed."""


@dataclass(frozen=True, slots=True)
class StreamData:
    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class StopSending:
    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class ConnectionIdIssued:
    connection_id: bytes


@dataclass(frozen=True, slots=True)
class ConnectionIdRetired:
    connection_id: bytes


@dataclass(frozen=True, slots=True)
class Terminated:
    error_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    """A QUIC DATAGRAM frame (unreliable; relays carry circuits in them)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    uid: int


QuicEvent = (
    HandshakeDone
    | StreamData
    | StreamReset
    | StopSending
    | ConnectionIdIssued
    | ConnectionIdRetired
    | Terminated
    | PingAcknowledged
    | DatagramReceived
)


@dataclass(frozen=True)
class QuicSettings:
    idle_timeout: float = 60.0
    max_datagram_size: int = 1350
    max_data: int = 32 * 1024 * 1024
    max_stream_data: int = 8 * 1024 * 1024


# -- connection adapter --------------------------------------------------------------


class QuicConnectionAdapter:
    """One QUIC connection of either stack, with normalised events."""

    def __init__(self, backend: QuicBackend, connection: Any, is_client: bool) -> None:
        self.backend = backend
        self.is_client = is_client
        self._conn = connection
        self._translate = backend.translators
        self._server_hello_group: int | None = None

    @property
    def host_cid(self) -> bytes:
        cid: bytes = self._conn.host_cid
        return cid

    def connect(self, addr: SocketAddress, now: float) -> None:
        self._conn.connect(addr, now=now)
        self._watch_server_hello()

    def receive_datagram(self, data: bytes, addr: SocketAddress, now: float) -> None:
        self._conn.receive_datagram(data, addr, now=now)

    def receive_datagrams(self, datagrams: list[bytes], addr: SocketAddress, now: float) -> None:
        """Several datagrams from one address, in order."""
        if len(datagrams) > 1 and self.backend.batch_receive:
            self._conn.receive_many_datagrams(datagrams, addr, now)
            return
        for data in datagrams:
            self._conn.receive_datagram(data, addr, now=now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, SocketAddress]]:
        datagrams: list[tuple[bytes, SocketAddress]] = self._conn.datagrams_to_send(now=now)
        return datagrams

    def get_timer(self) -> float | None:
        timer: float | None = self._conn.get_timer()
        return timer

    def has_events(self) -> bool:
        """Whether ``next_event`` has something (both stacks queue events in ``_events``)."""
        return bool(self._conn._events)

    def holding_events(self) -> bool:
        """Whether the stack holds received events back for now (qh3, see above)."""
        return bool(getattr(self._conn, "_holding_events", False))

    def handle_timer(self, now: float) -> None:
        self._conn.handle_timer(now=now)

    def next_event(self) -> QuicEvent | None:
        while True:
            event = self._conn.next_event()
            if event is None:
                return None
            translate = self._translate.get(type(event))
            if translate is not None:
                return translate(event)

    def next_stream_id(self, unidirectional: bool = False) -> int:
        stream_id: int = self._conn.get_next_available_stream_id(is_unidirectional=unidirectional)
        return stream_id

    def can_open_stream(self) -> bool:
        """Whether the peer's stream limit lets this side open another bidirectional
        stream now. qh3 refuses to send on a stream beyond it; aioquic opens the
        stream blocked and sends once the peer raises the limit."""
        return self.backend.can_open_stream(self._conn)

    # The operations below return False instead of raising when the stack refuses
    # (typically: the peer closed the connection and the event is not yet processed).

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        return self._guard(self._conn.send_stream_data, stream_id, data, end_stream)

    def reset_stream(self, stream_id: int, error_code: int) -> bool:
        return self._guard(self._conn.reset_stream, stream_id, error_code)

    def stop_stream(self, stream_id: int, error_code: int) -> bool:
        return self._guard(self._conn.stop_stream, stream_id, error_code)

    def send_ping(self, uid: int) -> bool:
        return self._guard(self._conn.send_ping, uid)

    def send_datagram(self, data: bytes) -> bool:
        return self._guard(self._conn.send_datagram_frame, data)

    def close(self, error_code: int, reason: str = "") -> bool:
        return self._guard(self._conn.close, error_code, None, reason)

    @staticmethod
    def _guard(operation: Callable[..., object], *args: object) -> bool:
        try:
            operation(*args)
        except Exception as exc:
            log.debug("QUIC %s refused: %s", getattr(operation, "__name__", "?"), exc)
            return False
        return True

    def close_event(self) -> tuple[int, str] | None:
        """The close code and reason once the connection is closing or draining.

        Both stacks record a peer's CONNECTION_CLOSE at once but emit their
        ``ConnectionTerminated`` event only after the draining period (3 PTO, which
        can be seconds); the node acts on the close without waiting for it.
        """
        event = getattr(self._conn, "_close_event", None)
        if event is None:
            return None
        return int(event.error_code), str(event.reason_phrase)

    def peer_certificate_der(self) -> bytes | None:
        return self.backend.peer_certificate_der(self._conn)

    def key_exchange_group(self) -> int | None:
        if self.is_client:
            return self._server_hello_group
        return self.backend.server_group(self._conn)

    def smoothed_rtt(self) -> float | None:
        try:
            return self.backend.smoothed_rtt(self._conn)
        except AttributeError:
            return None

    def _watch_server_hello(self) -> None:
        """Record the group of the ServerHello this client processes."""
        context = self._conn.tls
        original: Callable[[Any, Any], None] = context._client_handle_hello
        pull_server_hello = self.backend.pull_server_hello
        buffer_class = self.backend.buffer_class

        def handle_hello(input_buf: Any, output_buf: Any) -> None:
            start = input_buf.tell()
            original(input_buf, output_buf)
            raw = input_buf.data_slice(start, input_buf.tell())
            try:
                hello = pull_server_hello(buffer_class(data=raw))
                self._server_hello_group = int(hello.key_share[0])
            except Exception:  # only reporting depends on it
                self._server_hello_group = None

        setattr(context, "_client_handle_hello", handle_hello)  # noqa: B010


# -- backends ------------------------------------------------------------------------


class QuicBackend(ABC):
    """A QUIC stack: builds configurations and connections, knows its event classes."""

    name: QuicStack
    batch_receive: bool = False
    """Whether connections take a list of datagrams in one call."""

    def __init__(self, certificate: TlsCertificate, settings: QuicSettings) -> None:
        self.certificate = certificate
        self.settings = settings
        self.translators: dict[type, Callable[[Any], QuicEvent | None]] = {}
        self._load()

    @abstractmethod
    def _load(self) -> None:
        """Import the stack and fill ``translators``."""

    @abstractmethod
    def _configuration(self, is_client: bool) -> Any: ...

    @abstractmethod
    def _connection(
        self, configuration: Any, original_dcid: bytes | None, retry_cid: bytes | None = None
    ) -> Any: ...

    @abstractmethod
    def peer_certificate_der(self, connection: Any) -> bytes | None: ...

    @abstractmethod
    def server_group(self, connection: Any) -> int | None: ...

    @abstractmethod
    def smoothed_rtt(self, connection: Any) -> float | None: ...

    def can_open_stream(self, connection: Any) -> bool:
        return True

    pull_server_hello: Callable[[Any], Any]
    buffer_class: type

    def client(self) -> QuicConnectionAdapter:
        configuration = self._configuration(is_client=True)
        return QuicConnectionAdapter(self, self._connection(configuration, None), True)

    def server(self, original_dcid: bytes, retry_cid: bytes | None = None) -> QuicConnectionAdapter:
        """A server connection for a client Initial. After a Retry, ``original_dcid`` is
        the one the client first chose (from the token) and ``retry_cid`` the Retry's
        source connection ID (the address is then validated)."""
        configuration = self._server_configuration
        connection = self._connection(configuration, original_dcid, retry_cid)
        return QuicConnectionAdapter(self, connection, False)

    @cached_property
    def _server_configuration(self) -> Any:
        return self._configuration(is_client=False)

    def _common(self, configuration_class: type, is_client: bool) -> Any:
        return configuration_class(
            is_client=is_client,
            alpn_protocols=[ALPN],
            idle_timeout=self.settings.idle_timeout,
            max_datagram_size=self.settings.max_datagram_size,
            max_data=self.settings.max_data,
            max_stream_data=self.settings.max_stream_data,
            max_datagram_frame_size=MAX_DATAGRAM_FRAME_BYTES,
            verify_mode=ssl.CERT_NONE,  # identity is proven by the handshake, not by a CA
            server_name=None,
        )

    def _fill_translators(self, events: Any) -> None:
        self.translators = {
            events.HandshakeCompleted: lambda e: HandshakeDone(),
            events.StreamDataReceived: lambda e: StreamData(e.stream_id, e.data, e.end_stream),
            events.StreamReset: lambda e: StreamReset(e.stream_id, e.error_code),
            events.StopSendingReceived: lambda e: StopSending(e.stream_id, e.error_code),
            events.ConnectionIdIssued: lambda e: ConnectionIdIssued(e.connection_id),
            events.ConnectionIdRetired: lambda e: ConnectionIdRetired(e.connection_id),
            events.ConnectionTerminated: lambda e: Terminated(e.error_code, e.reason_phrase),
            events.PingAcknowledged: lambda e: PingAcknowledged(e.uid),
            events.DatagramFrameReceived: lambda e: DatagramReceived(e.data),
        }


class _Qh3Connection(Qh3Connection):
    """qh3's ``QuicConnection`` that pops its core's events only when no stream
    frame can be waiting in a reservation (see the module docstring)."""

    def __init__(self, *, hold_below: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hold_below = hold_below
        self._holding_events = False

    def _drain_core(self) -> None:
        if not self._holding_events:
            super()._drain_core()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        datagrams: list[tuple[bytes, Any]] = super().datagrams_to_send(now)
        core = self._core
        if core is None:
            return datagrams
        # The last poll_transmit returned nothing. It leaves reservations waiting
        # only when the congestion window had less than a datagram of room (the
        # core compares with its current datagram size, at most hold_below). Nothing
        # changes the window until the next datagram received or timer handled.
        self._holding_events = (
            self._handshake_complete
            and core.state == "connected"
            and core.congestion_window - core.bytes_in_flight < self._hold_below
        )
        if not self._holding_events:
            super()._drain_core()
        return datagrams


class Qh3Backend(QuicBackend):
    name: QuicStack = "qh3"
    batch_receive = True

    def _load(self) -> None:
        # qh3 logs every CONNECTION_CLOSE from a peer as a WARNING; here that is routine
        stack_log = logging.getLogger("quic")
        if stack_log.level == logging.NOTSET:
            stack_log.setLevel(logging.ERROR)
        self._configuration_class = Qh3Configuration
        self.pull_server_hello = qh3_tls.pull_server_hello
        self.buffer_class = Qh3Buffer
        # Not QuicConfiguration.load_cert_chain: its PEM splitting corrupts some
        # certificates ("Incorrect padding"); load the DER and the key directly.
        self._tls_certificate = Qh3Certificate(self.certificate.der)
        self._tls_key = qh3_tls.load_pem_private_key(self.certificate.key_pem)
        self._fill_translators(qh3_events)

    def _configuration(self, is_client: bool) -> Any:
        configuration = self._common(self._configuration_class, is_client)
        if not is_client:
            configuration.certificate = self._tls_certificate
            configuration.private_key = self._tls_key
        return configuration

    def _connection(
        self, configuration: Any, original_dcid: bytes | None, retry_cid: bytes | None = None
    ) -> Any:
        # the core's datagram size: the configured one, or what a client's path MTU
        # discovery found (at most QH3_PMTU_PROBE_LIMIT)
        largest_datagram = self.settings.max_datagram_size
        if original_dcid is None:
            largest_datagram = max(largest_datagram, QH3_PMTU_PROBE_LIMIT)
            return _Qh3Connection(configuration=configuration, hold_below=largest_datagram)
        return _Qh3Connection(
            configuration=configuration,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_cid,
            hold_below=largest_datagram,
        )

    def peer_certificate_der(self, connection: Any) -> bytes | None:
        certificate = connection.get_peercert()
        return None if certificate is None else bytes(certificate.public_bytes())

    def server_group(self, connection: Any) -> int | None:
        context = connection.tls
        if context is None:
            return None
        for attribute, group in (
            ("_x25519_kyber_768_private_key", 0x11EC),
            ("_x25519_private_key", 0x001D),
            ("_ec_p256_private_key", 0x0017),
            ("_ec_p384_private_key", 0x0018),
            ("_ec_p521_private_key", 0x0019),
        ):
            if getattr(context, attribute, None) is not None:
                return group
        return None

    def smoothed_rtt(self, connection: Any) -> float | None:
        core = connection._core
        if core is None:
            return None
        rtt: float | None = core.smoothed_rtt
        return rtt

    def can_open_stream(self, connection: Any) -> bool:
        core = connection._core
        if core is None or not connection._handshake_complete:
            return True  # staged until the handshake; not a request stream anyway
        peer_max_bidi: int = core.stream_limits[0]
        next_stream: int = connection.get_next_available_stream_id()
        return next_stream // 4 < peer_max_bidi


class AioquicBackend(QuicBackend):
    name: QuicStack = "aioquic"

    def _load(self) -> None:
        # aioquic is imported only by nodes that select it (about 9 MB per process).
        from aioquic import tls as aioquic_tls
        from aioquic._buffer import Buffer as AioquicBuffer
        from aioquic.quic import events as aioquic_events
        from aioquic.quic.configuration import QuicConfiguration as AioquicConfiguration
        from aioquic.quic.connection import QuicConnection as AioquicConnection

        _install_initial_padding_fix()
        self._configuration_class = AioquicConfiguration
        self._connection_class = AioquicConnection
        self.pull_server_hello = aioquic_tls.pull_server_hello
        self.buffer_class = AioquicBuffer
        self._tls_certificate = x509.load_der_x509_certificate(self.certificate.der)
        self._tls_key = serialization.load_pem_private_key(self.certificate.key_pem, None)
        self._fill_translators(aioquic_events)

    def _configuration(self, is_client: bool) -> Any:
        configuration = self._common(self._configuration_class, is_client)
        if not is_client:
            configuration.certificate = self._tls_certificate
            configuration.private_key = self._tls_key
        return configuration

    def _connection(
        self, configuration: Any, original_dcid: bytes | None, retry_cid: bytes | None = None
    ) -> Any:
        if original_dcid is None:
            return self._connection_class(configuration=configuration)
        return self._connection_class(
            configuration=configuration,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_cid,
        )

    def peer_certificate_der(self, connection: Any) -> bytes | None:
        certificate = connection.tls._peer_certificate
        if certificate is None:
            return None
        return bytes(certificate.public_bytes(serialization.Encoding.DER))

    def server_group(self, connection: Any) -> int | None:
        context = connection.tls
        if context is None:
            return None
        if context._x25519_private_key is not None:
            return 0x001D
        if context._x448_private_key is not None:
            return 0x001E
        if context._ec_private_keys:
            return _CURVE_GROUPS.get(context._ec_private_keys[0].curve.name)
        return None

    def smoothed_rtt(self, connection: Any) -> float | None:
        loss = connection._loss
        if not loss._rtt_initialized:
            return None
        rtt: float = loss._rtt_smoothed
        return rtt


_padding_fix_installed = False


def _install_initial_padding_fix() -> None:
    """Make aioquic clients pad inside their Initial packets (see the module docstring)."""
    global _padding_fix_installed  # noqa: PLW0603
    if _padding_fix_installed:
        return
    import aioquic.quic.connection as aioquic_connection
    from aioquic.quic.packet import QuicPacketType as AioquicPacketType
    from aioquic.quic.packet_builder import QuicPacketBuilder as AioquicPacketBuilder

    class InitialPaddingBuilder(AioquicPacketBuilder):
        def _end_packet(self) -> None:
            if self._is_client and self._packet_type == AioquicPacketType.INITIAL:
                payload = self._buffer.tell() - self._packet_start
                room = self.remaining_flight_space
                if payload > self._header_size and room > 0:
                    self._buffer.push_bytes(bytes(room))
            super()._end_packet()

    setattr(aioquic_connection, "QuicPacketBuilder", InitialPaddingBuilder)  # noqa: B010
    _padding_fix_installed = True


def make_backend(
    stack: QuicStack, certificate: TlsCertificate, settings: QuicSettings
) -> QuicBackend:
    if stack == "qh3":
        return Qh3Backend(certificate, settings)
    if stack == "aioquic":
        return AioquicBackend(certificate, settings)
    raise ValueError(f"unknown QUIC stack {stack!r} (expected qh3 or aioquic)")
