"""PaymentVerifier: asks the chain whether a proof's claim was paid, and what this node earned.

The ChunkKeeper does every off-chain check of a proof itself
(``protocol.payments.check_proof``) and hands this actor the one claim left
(``VerifyPayment``). The chain is slow and may be down, so the question runs on a
small thread pool, never on an actor's thread: the ChunkKeeper keeps serving GETs
meanwhile. Concurrent questions about the same quote hash share one chain call.
The answer comes back as a message (``_ChainAnswer``), is judged by
``protocol.payments.check_payment``, and goes to every waiter's ``on_done``.

Every ``earnings_interval`` seconds it sums the vault's ``DataPaymentMade`` events
to this node's rewards address: ``earned`` in ``status``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.base import NodeActor
from actors.messages import Event, StatusQuery, Tick
from protocol.payments import PaymentClaim, ProofVerdict, check_payment

log = logging.getLogger(__name__)

EARNINGS_INTERVAL = 30.0
CHAIN_WORKERS = 4


class ChainReader(Protocol):
    """What the verifier asks of the chain (``evm.vault.PaymentVaultReader``)."""

    def completed_payment(self, quote_hash: bytes) -> tuple[str, int]:
        """The rewards address (0x hex) and amount the vault recorded under ``quote_hash``."""
        ...

    def earned(self, rewards_address: str) -> int:
        """Token base units the vault has paid to ``rewards_address``."""
        ...


@dataclass(frozen=True, slots=True)
class VerifyPayment(Event):
    """Was ``claim`` paid on chain? ``on_done`` gets a ``ProofVerdict`` (``PAID``,
    ``UNPAID``, ``UNDERPAID``, ``WRONG_RECIPIENT`` or ``CHAIN_UNAVAILABLE``)."""

    claim: PaymentClaim
    on_done: Callable[[ProofVerdict], None] = field(repr=False)


@dataclass(frozen=True, slots=True)
class _ChainAnswer(Event):
    claim: PaymentClaim
    future: Future[tuple[str, int]] = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Earned(Event):
    future: Future[int] = field(repr=False)


class PaymentVerifier(NodeActor):
    name = "PaymentVerifier"

    def __init__(
        self,
        chain: ChainReader,
        rewards_address: bytes,
        *,
        earnings_interval: float = EARNINGS_INTERVAL,
    ) -> None:
        super().__init__()
        self.chain = chain
        self.rewards_address = rewards_address
        self.earnings_interval = earnings_interval
        self._pool = ThreadPoolExecutor(CHAIN_WORKERS, thread_name_prefix="chain")
        self._waiting: dict[bytes, list[Callable[[ProofVerdict], None]]] = {}
        self._earnings_at = float("-inf")
        self._earnings_running = False
        self.earned = 0
        self.chain_calls = 0
        self.chain_errors = 0
        self.last_chain_error = ""
        self.verdicts: dict[str, int] = {}

    def on_stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def on_receive(self, message: Any) -> Any:
        match message:
            case VerifyPayment(claim=claim, on_done=on_done):
                self._verify(claim, on_done)
            case _ChainAnswer(claim=claim, future=future):
                self._answered(claim, future)
            case _Earned(future=future):
                self._earnings_running = False
                try:
                    self.earned = future.result()
                except Exception as exc:
                    self._chain_failed(exc)
            case Tick(now=now):
                if not self._earnings_running and now - self._earnings_at >= self.earnings_interval:
                    self._earnings_at = now
                    self._earnings_running = True
                    self._ask_chain(self.chain.earned, _Earned, "0x" + self.rewards_address.hex())
            case StatusQuery():
                return {
                    "payments": {
                        "rewards_address": "0x" + self.rewards_address.hex(),
                        "earned": self.earned,
                        "chain_calls": self.chain_calls,
                        "chain_errors": self.chain_errors,
                        "last_chain_error": self.last_chain_error,
                        "proof_verdicts": dict(self.verdicts),
                    }
                }
            case _:
                return super().on_receive(message)
        return None

    def _verify(self, claim: PaymentClaim, on_done: Callable[[ProofVerdict], None]) -> None:
        waiting = self._waiting.get(claim.quote_hash)
        if waiting is not None:  # the same question is already with the chain
            waiting.append(on_done)
            return
        self._waiting[claim.quote_hash] = [on_done]
        self.chain_calls += 1
        self._ask_chain(
            self.chain.completed_payment, functools.partial(_ChainAnswer, claim), claim.quote_hash
        )

    def _ask_chain(
        self, call: Callable[[Any], Any], message: Callable[[Future[Any]], Event], argument: Any
    ) -> None:
        """Run ``call(argument)`` on the pool; tell this actor ``message(future)`` when done."""
        future = self._pool.submit(call, argument)
        future.add_done_callback(lambda done: self.tell_self(message(done)))

    def _answered(self, claim: PaymentClaim, future: Future[tuple[str, int]]) -> None:
        try:
            paid_to, amount = future.result()
            verdict = check_payment(claim, bytes.fromhex(paid_to.removeprefix("0x")), amount)
        except Exception as exc:
            self._chain_failed(exc)
            verdict = ProofVerdict.CHAIN_UNAVAILABLE
        self.verdicts[verdict.value] = self.verdicts.get(verdict.value, 0) + 1
        for on_done in self._waiting.pop(claim.quote_hash, []):
            on_done(verdict)

    def _chain_failed(self, exc: BaseException) -> None:
        self.chain_errors += 1
        self.last_chain_error = str(exc)[:200]
        log.warning("chain unavailable: %s", exc)
