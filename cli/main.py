"""The ``autonomi-actors`` command: run a node, ask it, and drive local networks."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from cli.control import ControlError, request
from cli.sizes import format_size, parse_size
from protocol.audit import DEFAULT_AUDIT_INTERVAL

if TYPE_CHECKING:
    from actors.node import Node, NodeConfig, NodePayments
    from cli.metrics import MetricsServer

log = logging.getLogger("autonomi_actors")


class UsageError(Exception):
    """A problem the user can fix: printed as one line, exit status 1."""


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds (0 or more): {text!r}")
    return value


def _evm_address(text: str) -> bytes:
    body = text.strip().removeprefix("0x").removeprefix("0X")
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raw = b""
    if len(raw) != 20:
        raise argparse.ArgumentTypeError(f"not an EVM address (0x + 40 hex): {text!r}")
    return raw


def _add_chain_flags(parser: argparse.ArgumentParser) -> None:
    """The chain a client pays on or reads from (unless a testnet's evm.json says)."""
    parser.add_argument(
        "--evm-network",
        choices=["arbitrum-one", "arbitrum-sepolia", "custom"],
        default="arbitrum-one",
        help="the chain (default arbitrum-one)",
    )
    parser.add_argument("--rpc-url", default=None, help="the chain's JSON-RPC URL")
    parser.add_argument("--token-address", default=None, metavar="0x...")
    parser.add_argument("--vault-address", default=None, metavar="0x...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autonomi-actors",
        description="A node of an Autonomi-style peer-to-peer storage network.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a node until Ctrl-C or SIGTERM")
    run.add_argument(
        "--root-dir",
        type=Path,
        default=None,
        help="where the node keeps its identity, database and chunks (default: one per PeerId under the user data dir)",
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a TOML file of settings (keys are the flags' names)",
    )
    run.add_argument(
        "--host", default="127.0.0.1", help="IPv4 address to listen on (default 127.0.0.1)"
    )
    run.add_argument(
        "--port", type=int, default=0, help="UDP port to listen on (default: any free port)"
    )
    run.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="ADDR",
        help="a multiaddr to join through (repeatable)",
    )
    run.add_argument("--first", action="store_true", help="start a new network: no peers to join")
    run.add_argument(
        "--local", action="store_true", help="loopback testnet mode: lift per-IP routing limits"
    )
    run.add_argument(
        "--max-storage",
        type=_size,
        default="10GiB",
        help="storage limit for chunks (default 10GiB)",
    )
    run.add_argument(
        "--cache-size",
        type=_size,
        default="512MiB",
        help="limit for chunks kept as cache, apart from --max-storage (default 512MiB)",
    )
    run.add_argument(
        "--quic", choices=["qh3", "aioquic"], default="qh3", help="QUIC stack (default qh3)"
    )
    run.add_argument(
        "--refresh-interval",
        type=float,
        default=300.0,
        help="seconds before a quiet bucket is refreshed (default 300)",
    )
    run.add_argument(
        "--liveness-interval",
        type=float,
        default=15.0,
        help="seconds between liveness pings of the closest peers (default 15)",
    )
    run.add_argument(
        "--repair-interval",
        type=float,
        default=120.0,
        help="seconds between replication repair passes (default 120)",
    )
    run.add_argument(
        "--audit-interval",
        type=_seconds,
        default=DEFAULT_AUDIT_INTERVAL,
        help="seconds between storage audits of each close-group peer, on average"
        f" (default {DEFAULT_AUDIT_INTERVAL:.0f}; 0: audit nobody)",
    )
    run.add_argument(
        "--punch-ttl",
        type=int,
        default=2,
        help="IP TTL of hole-punch openers: must leave your router, not reach the far one"
        " (default 2)",
    )
    run.add_argument(
        "--reachability",
        choices=["public", "private"],
        default=None,
        help="skip the dial-back checks: this node is known to be public / behind NAT",
    )
    run.add_argument(
        "--relay-rate",
        type=_size,
        default="8MiB",
        help="bandwidth granted to each peer relayed through this node, per second (default 8MiB)",
    )
    run.add_argument(
        "--relay-max-clients",
        type=int,
        default=64,
        help="peers behind NAT this node relays for at most (default 64)",
    )
    run.add_argument(
        "--no-relay",
        dest="serve_relay",
        action="store_false",
        help="do not relay or coordinate hole punches for peers behind NAT",
    )
    run.add_argument(
        "--rewards-address",
        type=_evm_address,
        default=None,
        metavar="0x...",
        help="the EVM account this node's payments go to; without it the node stores for free",
    )
    run.add_argument(
        "--evm-network",
        choices=["local", "arbitrum-one", "arbitrum-sepolia"],
        default="arbitrum-one",
        help="the chain payments are checked on (default arbitrum-one; local: a testnet's)",
    )
    run.add_argument(
        "--rpc-url", default=None, help="the chain's JSON-RPC URL (else the network's)"
    )
    run.add_argument(
        "--token-address",
        default=None,
        metavar="0x...",
        help="the token contract (else the network's)",
    )
    run.add_argument(
        "--vault-address",
        default=None,
        metavar="0x...",
        help="the PaymentVault contract (else the network's)",
    )
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    run.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="log lines as text (default) or JSON",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on 127.0.0.1:PORT/metrics",
    )
    run.add_argument(
        "--tui",
        action="store_true",
        help="show the live TUI of this node (logs go to ROOT/logs only)",
    )
    run.set_defaults(handler=cmd_run)

    status = commands.add_parser("status", help="ask a running node how it is doing")
    status.add_argument("--root-dir", type=Path, required=True)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)

    connect = commands.add_parser(
        "connect",
        help="have a running node reach a peer (direct, hole punch, relay) and say how",
    )
    connect.add_argument("--root-dir", type=Path, required=True)
    connect.add_argument("peer_id", help="the peer's id (64 hex)")
    connect.add_argument(
        "--addr",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="an address of the peer to try besides those the node knows (repeatable)",
    )
    connect.add_argument(
        "--fresh", action="store_true", help="close an existing connection first, make a new one"
    )
    connect.add_argument("--timeout", type=float, default=60.0)
    connect.add_argument("--json", action="store_true", help="print JSON")
    connect.set_defaults(handler=cmd_connect)

    top = commands.add_parser("top", help="live view of a running node's actors and connections")
    top.add_argument("--root-dir", type=Path, required=True)
    top.add_argument(
        "--interval", type=float, default=0.4, help="seconds between refreshes (default 0.4)"
    )
    top.set_defaults(handler=cmd_top)

    for verb in ("put", "get"):
        sub = commands.add_parser(
            verb,
            help="store a file on the network"
            if verb == "put"
            else "fetch a file by its data address",
        )
        if verb == "put":
            sub.add_argument("file", type=Path, help="the file to store")
        else:
            sub.add_argument("address", help="the data address `put` printed (64 hex)")
            sub.add_argument(
                "-o", "--output", type=Path, required=True, help="where to write the file"
            )
        entry = sub.add_mutually_exclusive_group(required=True)
        entry.add_argument(
            "--peer",
            action="append",
            metavar="ADDR",
            help="a node's multiaddr to enter through (repeatable)",
        )
        entry.add_argument(
            "--testnet", type=Path, metavar="DIR", help="enter through the nodes of a local testnet"
        )
        sub.add_argument("--quic", choices=["qh3", "aioquic"], default="qh3")
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
        if verb == "put":
            sub.add_argument(
                "--estimate",
                action="store_true",
                help="print what storing the file costs; pay and store nothing",
            )
            sub.add_argument(
                "--wallet-key-file",
                type=Path,
                default=None,
                metavar="FILE",
                help="the paying wallet's private key (hex); also AUTONOMI_ACTORS_WALLET_KEY_FILE"
                " (default in a testnet: its funded key)",
            )
            _add_chain_flags(sub)
        sub.set_defaults(handler=cmd_put if verb == "put" else cmd_get)

    wallet = commands.add_parser("wallet", help="a wallet's token balance")
    wallet_commands = wallet.add_subparsers(dest="wallet_command", required=True, metavar="ACTION")
    balance = wallet_commands.add_parser("balance", help="print the token balance of an address")
    balance.add_argument("address", help="the EVM address (0x + 40 hex)")
    balance.add_argument(
        "--testnet", type=Path, metavar="DIR", help="the local chain of this testnet"
    )
    _add_chain_flags(balance)
    balance.add_argument("--json", action="store_true", help="print JSON")
    balance.set_defaults(handler=cmd_wallet_balance)

    demo = commands.add_parser(
        "demo", help="start a local testnet, put a file, get it back, open the TUI"
    )
    demo.add_argument("--nodes", type=int, default=25)
    demo.add_argument(
        "--dir", type=Path, default=None, help="testnet dir (default: under the user data dir)"
    )
    demo.add_argument("--no-tui", action="store_true", help="do not open the TUI at the end")
    demo.set_defaults(handler=cmd_demo)

    testnet = commands.add_parser("testnet", help="a local network of node processes on 127.0.0.1")
    testnet_commands = testnet.add_subparsers(
        dest="testnet_command", required=True, metavar="ACTION"
    )
    t_start = testnet_commands.add_parser(
        "start", help="start N nodes and wait until all have joined"
    )
    t_start.add_argument("--nodes", type=int, default=25, help="how many nodes (default 25)")
    t_start.add_argument(
        "--dir", type=Path, default=None, help="testnet dir (default: under the user data dir)"
    )
    t_start.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for all to join"
    )
    t_start.add_argument(
        "--no-payments",
        dest="payments",
        action="store_false",
        help="a free network: no local chain, nodes store unpaid data",
    )
    t_start.add_argument(
        "node_args",
        nargs="*",
        metavar="-- NODE_FLAG",
        help="flags after -- go to every node's run (e.g. -- --repair-interval 30)",
    )
    t_start.set_defaults(handler=cmd_testnet_start)
    t_status = testnet_commands.add_parser(
        "status", help="print the manifest and which nodes are alive"
    )
    t_status.add_argument("--dir", type=Path, default=None)
    t_status.add_argument("--json", action="store_true")
    t_status.set_defaults(handler=cmd_testnet_status)
    t_stop = testnet_commands.add_parser("stop", help="stop every node (SIGTERM, then SIGKILL)")
    t_stop.add_argument("--dir", type=Path, default=None)
    t_stop.set_defaults(handler=cmd_testnet_stop)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from actors.node import Node, NodeConfig
    from cli import logs
    from persistence.root_dir import default_root_dir, name_root_dir_by_peer_id, prepare_root_dir
    from protocol.identity import load_or_create
    from protocol.nat import Reachability
    from protocol.relay import RelayLimits

    _check_run_args(args)
    root_dir = prepare_root_dir(args.root_dir if args.root_dir is not None else default_root_dir())
    if args.root_dir is None:
        identity, _ = load_or_create(root_dir)
        root_dir = name_root_dir_by_peer_id(root_dir, identity.peer_id_hex)

    if not args.first and not args.peer:
        log.info("no --peer given: this node waits for others to join it")
    config = NodeConfig(
        root_dir=root_dir,
        host=args.host,
        port=args.port,
        peers=tuple(args.peer),
        first=args.first,
        local=args.local,
        max_storage=args.max_storage,
        cache_size=args.cache_size,
        quic=args.quic,
        refresh_interval=args.refresh_interval,
        liveness_interval=args.liveness_interval,
        repair_interval=args.repair_interval,
        audit_interval=args.audit_interval,
        punch_ttl=args.punch_ttl,
        reachability=None if args.reachability is None else Reachability(args.reachability),
        serve_relay=args.serve_relay,
        relay_limits=RelayLimits(
            max_reservations=args.relay_max_clients, bytes_per_second=args.relay_rate
        ),
        payments=_node_payments(args),
    )
    log_file = logs.configure(args.log_level, args.log_format, root_dir, to_stderr=not args.tui)
    node = Node(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node.start()
    metrics = None
    try:
        if args.metrics_port is not None:
            from cli.metrics import MetricsServer  # http.server: only when asked for

            try:
                metrics = MetricsServer(node.status, port=args.metrics_port)
            except OSError as exc:
                raise UsageError(
                    f"cannot serve metrics on 127.0.0.1:{args.metrics_port}: {exc.strerror or exc}"
                ) from None
            metrics.start()
        _banner(node, config, log_file, metrics)
        if args.tui:
            from cli.top import run_top

            run_top(root_dir, stop=stop)
            stop.set()  # q in the TUI of `run --tui` stops the node too
        while not stop.wait(0.5):
            pass
    finally:
        if metrics is not None:
            metrics.stop()
        node.stop()
    log.info("stopped")
    return 0


def _check_run_args(args: argparse.Namespace) -> None:
    """Fail with one line, before anything starts, on a flag the node could not use."""
    import ipaddress
    import socket

    try:
        ipaddress.IPv4Address(args.host)
    except ValueError:
        raise UsageError(f"--host must be an IPv4 address, got {args.host!r}") from None
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {args.port}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port must be 0-65535, got {args.metrics_port}")
    _check_peer_addrs(args.peer)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            raise UsageError(
                f"cannot listen on UDP {args.host}:{args.port}: {exc.strerror or exc}"
            ) from None


def _node_payments(args: argparse.Namespace) -> NodePayments | None:
    """The chain a paid node checks proofs on; None (a free node) without a rewards address."""
    if args.rewards_address is None:
        log.warning("no --rewards-address: this node stores for free and earns nothing")
        return None
    from actors.node import NodePayments
    from evm.networks import EvmSettingsError, resolve_settings

    try:
        settings = resolve_settings(
            args.evm_network,
            rpc_url=args.rpc_url,
            token_address=args.token_address,
            vault_address=args.vault_address,
        )
    except EvmSettingsError as exc:
        raise UsageError(str(exc)) from None
    return NodePayments(
        rewards_address=args.rewards_address,
        rpc_url=settings.rpc_url,
        token_address=settings.token_address,
        vault_address=settings.vault_address,
    )


def _banner(
    node: Node, config: NodeConfig, log_file: Path | None, metrics: MetricsServer | None
) -> None:
    assert node.identity is not None
    log.info("node %s running in %s", node.identity.peer_id_hex, node.root_dir)
    for addr in node.status().get("listen_addrs", []):
        log.info("listening on %s", addr)
    log.info(
        "storage limit %s, cache %s; logs in %s",
        format_size(config.max_storage),
        format_size(config.cache_size),
        log_file,
    )
    if config.payments is not None:
        log.info(
            "paid storage: rewards to 0x%s, proofs checked on %s",
            config.payments.rewards_address.hex(),
            config.payments.rpc_url,
        )
    if metrics is not None:
        log.info("metrics on http://127.0.0.1:%d/metrics", metrics.port)


def cmd_status(args: argparse.Namespace) -> int:
    status = request(args.root_dir, "status")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print_status(status)
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    from protocol.xor import from_hex

    try:
        from_hex(args.peer_id)
    except ValueError:
        raise UsageError(f"not a 64-hex peer id: {args.peer_id!r}") from None
    result = request(
        args.root_dir,
        "connect",
        timeout=args.timeout + 5,
        peer_id=args.peer_id,
        addrs=args.addr,
        fresh=args.fresh,
        timeout_s=args.timeout,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for attempt in result.get("attempts", []):
            print(
                f"  {attempt['step']:<7} via {attempt['via']}: {attempt['outcome']}"
                f" ({attempt['seconds'] * 1000:.1f} ms)"
            )
        if result.get("connected"):
            rtt = result.get("rtt_ms")
            print(
                f"{args.peer_id[:12]}: {result['how']} in {result['connect_ms']:.1f} ms, "
                f"rtt {'?' if rtt is None else f'{rtt:.2f} ms'}"
            )
        else:
            print(f"{args.peer_id[:12]}: unreachable ({result.get('error')})")
    return 0 if result.get("connected") else 1


def cmd_top(args: argparse.Namespace) -> int:
    from cli.top import MIN_INTERVAL, STATUS_TIMEOUT, run_top

    if args.interval < MIN_INTERVAL:
        raise UsageError(f"--interval must be at least {MIN_INTERVAL} seconds")
    from rich.console import Console

    if not Console().is_terminal:
        # One screen, no waiting: with no node that is a one-line ControlError. (On a
        # terminal, top shows "not answering" and waits for the node to come up.)
        request(args.root_dir, "status", timeout=STATUS_TIMEOUT)
    return run_top(args.root_dir, args.interval)


def _testnet_dir(args: argparse.Namespace) -> Path:
    from cli.testnet import default_testnet_dir

    directory = Path(args.dir) if args.dir is not None else default_testnet_dir()
    return _checked_testnet_dir(directory)


def _checked_testnet_dir(directory: Path) -> Path:
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"testnet dir {directory} is not a directory")
    return directory


def cmd_testnet_start(args: argparse.Namespace) -> int:
    import time

    from cli.testnet import start

    directory = _testnet_dir(args)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create testnet dir {directory}: {exc.strerror or exc}") from None
    started = time.monotonic()
    nodes = start(
        directory,
        args.nodes,
        timeout=args.timeout,
        extra_args=tuple(args.node_args),
        payments=args.payments,
    )
    elapsed = time.monotonic() - started
    print(f"{len(nodes)} nodes joined in {elapsed:.1f} s; manifest: {directory / 'manifest.json'}")
    print(f"bootstrap: {nodes[0].multiaddr}")
    return 0


def cmd_testnet_status(args: argparse.Namespace) -> int:
    from cli.testnet import status

    directory = _testnet_dir(args)
    nodes = status(directory)
    if args.json:
        print(json.dumps({"nodes": nodes}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"testnet in {directory}", title_justify="left")
    for column in ("#", "peer id", "multiaddr", "pid", "alive"):
        table.add_column(column)
    for i, node in enumerate(nodes):
        table.add_row(
            str(i),
            node["peer_id"][:16],
            node["multiaddr"].split("/p2p/")[0],
            str(node["pid"]),
            "yes" if node["alive"] else "[red]no[/]",
        )
    Console().print(table)
    return 0


def cmd_testnet_stop(args: argparse.Namespace) -> int:
    from cli.testnet import stop

    count = stop(_testnet_dir(args))
    print(f"stopped {count} nodes")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """What `make run` does: a network you can watch, with a file in it."""
    import filecmp
    import os
    import tempfile
    import time

    from actors.client import Client
    from cli.testnet import TestnetError, read_manifest, start
    from cli.testnet import status as testnet_status

    directory = _testnet_dir(args)
    try:
        running = all(n["alive"] for n in testnet_status(directory))
    except TestnetError:
        running = False
    if running:
        print(f"a testnet is already running in {directory}")
    else:
        started = time.monotonic()
        start(directory, args.nodes)
        print(f"{args.nodes} nodes joined in {time.monotonic() - started:.1f} s ({directory})")
    nodes = read_manifest(directory)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "demo.bin"
        source.write_bytes(os.urandom(5 * 1024 * 1024))
        wallet, receipts = _client_wallet(
            argparse.Namespace(wallet_key_file=None, testnet=directory)
        )
        with Client(
            [n.multiaddr for n in nodes[:4]], host="127.0.0.1", wallet=wallet, receipts_dir=receipts
        ) as client:
            report = client.upload_file(source)
            address = report.address
            print(
                f"put 5 MiB: data address {address.hex()}; paid {report.paid} token units"
                f" for {report.chunks} chunks"
            )
            back = Path(tmp) / "back.bin"
            client.get_file(address, back)
        same = filecmp.cmp(source, back, shallow=False)
        print(f"got it back from the network: {'identical' if same else 'DIFFERENT'}")
    exe = "autonomi-actors"
    print("try:")
    print(f"  {exe} put FILE --testnet {directory} [--estimate]")
    if wallet is not None:
        print(f"  {exe} wallet balance {wallet.address} --testnet {directory}")
    print(f"  {exe} get ADDRESS -o OUT --testnet {directory}")
    print(f"  {exe} status --root-dir {nodes[0].root_dir}")
    print(f"  {exe} top --root-dir {nodes[0].root_dir}")
    print(f"  {exe} testnet stop --dir {directory}")
    if args.no_tui or not sys.stdout.isatty():
        return 0 if same else 1
    from cli.top import run_top

    time.sleep(1.0)
    return run_top(Path(nodes[0].root_dir))


def _entry_peers(args: argparse.Namespace) -> list[str]:
    if args.peer:
        _check_peer_addrs(args.peer)
        return list(args.peer)
    from cli.testnet import read_manifest

    nodes = read_manifest(_checked_testnet_dir(args.testnet))
    return [n.multiaddr for n in nodes[:8]]


def _check_peer_addrs(addrs: Sequence[str]) -> None:
    from protocol.multiaddr import MultiaddrError, parse_multiaddr

    for addr in addrs:
        try:
            parse_multiaddr(addr)
        except MultiaddrError as exc:
            raise UsageError(f"bad --peer: {exc}") from None


def _progress(quiet: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    console = Console(stderr=True)
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        # Off a terminal a bar cannot be erased: it would leave a blank line on stderr.
        disable=quiet or not console.is_terminal,
        transient=True,
    )


def cmd_put(args: argparse.Namespace) -> int:
    import time

    from actors.client import Client

    path: Path = args.file
    _check_input_file(path)
    size = path.stat().st_size
    peers = _entry_peers(args)
    wallet, receipts = _client_wallet(args)
    started = time.monotonic()
    with (
        Client(peers, quic=args.quic, wallet=wallet, receipts_dir=receipts) as client,
        _progress(args.quiet or args.estimate) as bar,
    ):
        task = bar.add_task(f"put {path.name}", total=max(size, 1))
        report = client.upload_file(
            path, progress=lambda n: bar.advance(task, n), estimate=args.estimate
        )
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({**report.as_dict(), "size": size, "seconds": round(elapsed, 3)}))
    elif args.estimate:
        print(
            f"storing {path.name} ({format_size(size)}, {report.chunks} chunks, "
            f"{report.already_stored} already stored) costs {report.paid} token units"
        )
    else:
        print(
            f"stored {format_size(size)} in {elapsed:.2f} s: {report.chunks} chunks, "
            f"{report.already_stored} already stored, paid {report.paid} token units; "
            "data address:",
            file=sys.stderr,
        )
        print(report.address.hex())
    return 0


def _client_wallet(args: argparse.Namespace) -> tuple[Any, Path | None]:
    """The wallet a put pays with, and where its receipts are kept: a testnet's funded
    key (unless a key file is given) on a paid testnet; else the key file, if any."""
    import os

    import platformdirs

    from evm.wallet import WalletKeyError, load_private_key, parse_private_key

    key_file = args.wallet_key_file or os.environ.get("AUTONOMI_ACTORS_WALLET_KEY_FILE")
    chain: dict[str, Any] | None = None
    receipts = Path(platformdirs.user_data_dir("autonomi-actors")) / "client-receipts"
    if args.testnet is not None:
        receipts = args.testnet / "client-receipts"
        chain = _testnet_chain(args.testnet)
    try:
        if key_file:
            key = load_private_key(key_file)
        elif chain is not None:
            key = parse_private_key(str(chain["client_private_key"]), source="evm.json")
        else:
            return None, None  # a free network: nothing to pay with
    except WalletKeyError as exc:
        raise UsageError(str(exc)) from None
    from evm.rpc import RpcClient
    from evm.wallet import Wallet

    settings = _chain_settings(args, chain)
    rpc = RpcClient(settings.rpc_url)
    return Wallet(rpc, key, settings.token_address, settings.vault_address), receipts


def _testnet_chain(directory: Path) -> dict[str, Any] | None:
    """The local chain of a paid testnet (its evm.json), None on a free one."""
    from cli.testnet import EVM_JSON
    from evm.local_chain import read_evm_json

    return read_evm_json(directory) if (directory / EVM_JSON).exists() else None


def _chain_settings(args: argparse.Namespace, chain: dict[str, Any] | None) -> Any:
    """The chain to pay on or read from: a testnet's evm.json, else the flags."""
    from evm.networks import EvmSettingsError, resolve_settings

    try:
        if chain is not None:
            return resolve_settings(
                "local",
                rpc_url=str(chain["rpc_url"]),
                token_address=str(chain["token_address"]),
                vault_address=str(chain["vault_address"]),
            )
        return resolve_settings(
            args.evm_network,
            rpc_url=args.rpc_url,
            token_address=args.token_address,
            vault_address=args.vault_address,
        )
    except (EvmSettingsError, KeyError) as exc:
        raise UsageError(f"chain settings: {exc}") from None


def cmd_wallet_balance(args: argparse.Namespace) -> int:
    from evm.abi import AbiError, normalize_address
    from evm.rpc import RpcClient
    from evm.vault import PaymentVaultReader

    try:
        address = normalize_address(args.address)
    except AbiError as exc:
        raise UsageError(str(exc)) from None
    chain = None
    if args.testnet is not None:
        chain = _testnet_chain(args.testnet)
        if chain is None:
            raise UsageError(f"testnet {args.testnet} has no local chain (started --no-payments?)")
    settings = _chain_settings(args, chain)
    reader = PaymentVaultReader(
        RpcClient(settings.rpc_url), settings.vault_address, settings.token_address
    )
    balance = reader.token_balance(address)
    if args.json:
        print(json.dumps({"address": address, "balance": balance}))
    else:
        print(f"{address}: {balance} token units ({balance / 10**18:.6f} ANT)")
    return 0


def _check_input_file(path: Path) -> None:
    import os

    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a file (put stores one file)")
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path} is not readable (permission denied)")


def _check_output_file(out: Path) -> None:
    """Fail before contacting the network if ``out`` cannot be written."""
    import os

    if out.is_dir():
        raise UsageError(f"output {out} is a directory: give a file name, e.g. {out / 'file'}")
    folder = out.absolute().parent
    if not folder.exists():
        raise UsageError(f"cannot write {out}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"cannot write {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {out}: folder {folder} is not writable")


def cmd_get(args: argparse.Namespace) -> int:
    import time

    from actors.client import Client
    from protocol.self_encryption import MissingChunk, SelfEncryptionError
    from protocol.xor import from_hex

    try:
        address = from_hex(args.address)
    except ValueError as exc:
        raise UsageError(f"bad data address {args.address!r}: {exc}") from None
    _check_output_file(args.output)
    started = time.monotonic()
    with (
        Client(_entry_peers(args), quic=args.quic) as client,
        _progress(args.quiet) as bar,
    ):
        task = bar.add_task(f"get {address.hex()[:12]}", total=None)
        try:
            size = client.get_file(address, args.output, progress=lambda n: bar.advance(task, n))
        except MissingChunk as exc:
            if exc.address == address:
                raise UsageError(f"nothing is stored at data address {address.hex()}") from None
            raise UsageError(
                f"the file at {address.hex()} is incomplete: chunk {exc.address.hex()}"
                " is not found on the network"
            ) from None
        except SelfEncryptionError as exc:
            raise UsageError(f"cannot get {address.hex()}: {exc}") from None
    elapsed = time.monotonic() - started
    if args.json:
        print(
            json.dumps(
                {
                    "address": address.hex(),
                    "size": size,
                    "output": str(args.output),
                    "seconds": round(elapsed, 3),
                }
            )
        )
    else:
        print(f"wrote {format_size(size)} to {args.output} in {elapsed:.2f} s", file=sys.stderr)
    return 0


def print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]peer id[/]      {status['peer_id']}")
    console.print(
        f"[bold]public key[/]   {status['public_key'][:32]}… ({len(status['public_key']) // 2} bytes)"
    )
    for addr in status.get("listen_addrs", []):
        console.print(f"[bold]listening[/]    {addr}")
    if "routing_table_size" in status:
        console.print(f"[bold]routing table[/] {status['routing_table_size']} peers")
    if status.get("close_group"):
        console.print(f"[bold]close group[/]  {', '.join(p[:12] for p in status['close_group'])}")
    if "chunks" in status:
        console.print(
            f"[bold]chunks[/]       {status['chunks']} ({format_size(status.get('bytes_stored', 0))})"
        )
    payments = status.get("payments")
    if isinstance(payments, dict):
        from cli.top import format_ant

        if not payments.get("enabled"):
            console.print("[bold]payments[/]     free (no rewards address)")
        else:
            console.print(
                f"[bold]payments[/]     rewards {payments.get('rewards_address', '?')}, earned "
                f"{format_ant(int(payments.get('earned', 0)))}, "
                f"{payments.get('quotes_given', 0)} quotes given, "
                f"{payments.get('paid_chunks', 0)} paid chunks"
            )
    audits = status.get("audits")
    if isinstance(audits, dict):
        from cli.top import least_trusted

        if audits.get("enabled") is False:
            console.print("[bold]audits[/]       off")
        else:
            shunned = audits.get("shunned") or []
            console.print(
                f"[bold]audits[/]       {audits.get('sent', 0)} sent, "
                f"{audits.get('passed', 0)} passed, {audits.get('failed', 0)} failed, "
                f"{audits.get('unanswered', 0)} unanswered; {audits.get('answered', 0)} answered; "
                f"shunned {len(shunned)} peer(s)"
            )
            lowest = least_trusted(audits, limit=5)
            if lowest:
                console.print(
                    "[bold]trust[/]        lowest "
                    + ", ".join(
                        f"{p.peer_id[:12]} {'-' if p.score is None else f'{p.score:g}'}"
                        + (" (shunned)" if p.shunned else "")
                        for p in lowest
                    )
                )
    nat = status.get("nat")
    if isinstance(nat, dict):
        relay = nat.get("relay")
        console.print(
            f"[bold]reachability[/] {nat.get('reachability')}"
            + (f" (relay {relay[:12]})" if relay else "")
        )
        for addr in nat.get("observed_addrs", {}):
            console.print(f"[bold]observed as[/]  {addr}")
    connections = status.get("connections", [])
    if connections:
        kinds = Counter(str(c.get("how", "direct")) for c in connections)
        console.print(
            f"[bold]connections[/]  {len(connections)} ("
            + ", ".join(f"{n} {how}" for how, n in sorted(kinds.items()))
            + ")"
        )
    table = Table(title="actors", title_justify="left")
    for column in ("actor", "depth", "processed", "rate/s", "mean ms", "last message"):
        table.add_column(column, justify="left" if column in ("actor", "last message") else "right")
    for name, fig in status.get("actors", {}).items():
        table.add_row(
            name,
            str(fig["depth"]),
            str(fig["processed"]),
            f"{fig['rate']:.1f}",
            f"{fig['mean_ms']:.3f}",
            fig["last_message"],
        )
    console.print(table)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    raise KeyError(name)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _parse_and_run(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if _is_user_error(exc):
            print(f"autonomi-actors: error: {exc}", file=sys.stderr)
            return 1
        raise


def _parse_and_run(argv: list[str]) -> int:
    parser = build_parser()
    if argv[:1] == ["run"]:
        from cli.config import apply_defaults

        apply_defaults(_subparser(parser, "run"), argv[1:])
    args = parser.parse_args(argv)
    if args.command != "run":  # run sets up its own logging, with its root dir known
        from cli import logs

        logs.configure(getattr(args, "log_level", "WARNING"))
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _is_user_error(exc: Exception) -> bool:
    from actors.client import ClientError
    from cli.config import ConfigError
    from cli.testnet import TestnetError
    from evm.rpc import ChainError
    from persistence.errors import PersistenceError
    from persistence.root_dir import RootDirError
    from protocol.identity import IdentityError
    from protocol.multiaddr import MultiaddrError
    from protocol.self_encryption import SelfEncryptionError

    user_errors = (
        UsageError,
        ConfigError,
        ControlError,
        RootDirError,
        IdentityError,
        MultiaddrError,
        TestnetError,
        PersistenceError,
        ChainError,
        ClientError,
        SelfEncryptionError,
    )
    return isinstance(exc, user_errors)
