"""A small model of one vLLM replica's scheduler and step time, driven by the caller's clock.

The fake engine serves HTTP from it in real time; the policy benchmark steps it in simulated time.
It keeps what makes routing matter: continuous batching with a per-step token budget and chunked
prefill, a paged KV cache that admits waiting requests first-come-first-served and stops at the
first that does not fit, preemption (recompute) of the newest running request when decode runs
out of blocks, and a step time that grows with the tokens in the step:

    step_s = step_base_s + prefill_token_s * prefill_tokens + decode_seq_s * decode_seqs
             + kv_token_s * kv_tokens_read

It is not vLLM: no prefix caching, no priorities, one sequence per request.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StepCosts:
    """Seconds per step and per unit of work in a step (all zero: instantaneous)."""

    step_base_s: float = 0.0
    prefill_token_s: float = 0.0
    decode_seq_s: float = 0.0
    kv_token_s: float = 0.0


@dataclass(frozen=True, slots=True)
class EngineShape:
    num_gpu_blocks: int = 8192
    block_size: int = 16
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    max_model_len: int = 32768

    def __post_init__(self) -> None:
        if self.max_model_len > self.kv_capacity_tokens:
            raise ValueError("max_model_len must fit in the KV cache, or requests never finish")

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size


@dataclass(slots=True)
class _Request:
    req_id: str
    prompt_tokens: int
    max_tokens: int
    arrival: float
    computed: int = 0
    """Tokens whose KV is computed (prompt, then generated ones after a preemption)."""
    generated: int = 0
    blocks: int = 0
    first_token_at: float | None = None
    scheduled_at: float | None = None
    preemptions: int = 0

    @property
    def to_prefill(self) -> int:
        """Tokens to compute before the next token can be sampled."""
        return self.prompt_tokens + self.generated - self.computed


@dataclass(frozen=True, slots=True)
class TokenEvent:
    req_id: str
    new_tokens: int
    finished: bool
    first: bool


@dataclass(slots=True)
class FinishedRecord:
    req_id: str
    arrival: float
    queue_s: float
    ttft_s: float
    e2e_s: float
    prompt_tokens: int
    generated: int
    preemptions: int


@dataclass(slots=True)
class EngineModel:
    """Holds the requests of one replica. Call `schedule(now)` to form a step; it returns the
    step's duration; call `complete(now + duration)` to apply it and get the tokens produced."""

    shape: EngineShape = field(default_factory=EngineShape)
    costs: StepCosts = field(default_factory=StepCosts)
    waiting: deque[_Request] = field(default_factory=deque)
    running: list[_Request] = field(default_factory=list)
    used_blocks: int = 0
    num_preemptions: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    aborted_total: int = 0
    finished: list[FinishedRecord] = field(default_factory=list)
    _requests: dict[str, _Request] = field(default_factory=dict)
    _step: list[tuple[_Request, int]] = field(default_factory=list)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def kv_usage(self) -> float:
        return self.used_blocks / self.shape.num_gpu_blocks

    @property
    def step_formed(self) -> bool:
        """True between a `schedule` that found work and the matching `complete`."""
        return bool(self._step)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, req_id: str, prompt_tokens: int, max_tokens: int, now: float) -> None:
        if req_id in self._requests:
            raise ValueError(f"duplicate request id {req_id}")
        if prompt_tokens < 1 or max_tokens < 1:
            raise ValueError("a request needs at least one prompt token and one output token")
        if prompt_tokens + max_tokens > self.shape.max_model_len:
            raise ValueError(
                f"prompt ({prompt_tokens}) + max_tokens ({max_tokens}) exceeds the model's "
                f"maximum length {self.shape.max_model_len}"
            )
        req = _Request(req_id, prompt_tokens, max_tokens, arrival=now)
        self._requests[req_id] = req
        self.waiting.append(req)

    def abort(self, req_id: str) -> bool:
        """Drop a request (client went away). False when it is unknown or already finished."""
        req = self._requests.pop(req_id, None)
        if req is None:
            return False
        if req in self.running:
            self.running.remove(req)
        else:
            self.waiting.remove(req)
        self._free(req)
        self._step = [(r, n) for r, n in self._step if r is not req]
        self.aborted_total += 1
        return True

    def _free(self, req: _Request) -> None:
        self.used_blocks -= req.blocks
        req.blocks = 0

    def _grow(self, req: _Request, tokens: int) -> bool:
        """Reserve blocks so that `req` can hold `tokens` more KV tokens."""
        need = math.ceil((req.computed + tokens) / self.shape.block_size) - req.blocks
        if need <= 0:
            return True
        if self.used_blocks + need > self.shape.num_gpu_blocks:
            return False
        self.used_blocks += need
        req.blocks += need
        return True

    def _preempt(self, victim: _Request) -> None:
        self.running.remove(victim)
        self._free(victim)
        victim.computed = 0
        victim.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)

    def schedule(self, now: float) -> float:
        """Form the next step and return its duration in seconds (0 when there is no work)."""
        budget = self.shape.max_num_batched_tokens
        step: list[tuple[_Request, int]] = []
        prefill_tokens = decode_seqs = kv_read = 0
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            tokens = min(req.to_prefill, budget)
            is_decode = req.generated > 0 and req.to_prefill == 1
            while not self._grow(req, tokens):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is req:
                    break
            else:
                step.append((req, tokens))
                budget -= tokens
                if is_decode:
                    decode_seqs += 1
                else:
                    prefill_tokens += tokens
                kv_read += req.computed + tokens
                i += 1
                continue
            # req itself was preempted: the list shrank, index i now holds the next request
        while self.waiting and budget > 0 and len(self.running) < self.shape.max_num_seqs:
            req = self.waiting[0]
            tokens = min(req.to_prefill, budget)
            if not self._grow(req, tokens):
                break
            self.waiting.popleft()
            self.running.append(req)
            if req.scheduled_at is None:
                req.scheduled_at = now
            step.append((req, tokens))
            budget -= tokens
            prefill_tokens += tokens
            kv_read += req.computed + tokens
        self._step = step
        if not step:
            return 0.0
        c = self.costs
        return (
            c.step_base_s
            + c.prefill_token_s * prefill_tokens
            + c.decode_seq_s * decode_seqs
            + c.kv_token_s * kv_read
        )

    def complete(self, now: float) -> list[TokenEvent]:
        """Apply the step formed by the last `schedule` call at time `now`."""
        events: list[TokenEvent] = []
        for req, tokens in self._step:
            if not (req.generated > 0 and req.to_prefill == 1):
                self.prompt_tokens_total += tokens
            req.computed += tokens
            if req.to_prefill > 0:  # chunked prefill not done yet: no token this step
                continue
            req.generated += 1
            self.generation_tokens_total += 1
            first = req.first_token_at is None
            if first:
                req.first_token_at = now
            done = req.generated >= req.max_tokens
            events.append(TokenEvent(req.req_id, 1, done, first))
            if done:
                self.running.remove(req)
                self._free(req)
                del self._requests[req.req_id]
                assert req.first_token_at is not None
                self.finished.append(
                    FinishedRecord(
                        req_id=req.req_id,
                        arrival=req.arrival,
                        queue_s=(req.scheduled_at or now) - req.arrival,
                        ttft_s=req.first_token_at - req.arrival,
                        e2e_s=now - req.arrival,
                        prompt_tokens=req.prompt_tokens,
                        generated=req.generated,
                        preemptions=req.preemptions,
                    )
                )
        self._step = []
        return events
