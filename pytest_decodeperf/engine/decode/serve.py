"""Continuous batching as a generation: transformers' ``generate_batch`` serving a queue of requests.

Each row of the request is a request of its own (its padding stripped); at most ``concurrency`` run at once, and a
request joins the running batch as another leaves (its stop), which is what a server does and static batching does
not. transformers runs the batch in a thread of its own, over a paged K/V cache sized here for the requests (a
``ContinuousBatchingConfig`` left to its defaults sizes it to the machine's free memory: seconds of allocation on a
CPU, every call).

What is recorded comes from transformers' own per-token timestamps (``record_timestamps``) and a pre-hook on the
model's forward (how many requests each step carried): per request, the time to its first token (from when it was
queued) and the time per output token after it, the gaps between its tokens, and over the run the throughput and
the batch occupancy per step. The forwards are also the steps every observer hears (``observe.ForwardSteps``).

Not counted: blocking reads. The forwards run in transformers' thread, where a dispatch mode of the caller's
thread sees nothing, so a serving variant's syncs are reported as not counted, never as zero.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import GenerationConfig, PreTrainedModel

from ...errors import DecodePerfError
from .observe import ForwardSteps
from .refusals import model_eos_cleared
from .request import DecodeOutput, Request

PAGE = 16  # tokens a block of the paged cache holds


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Serving:
    """One run of a request queue: per request its TTFT and TPOT (ms), every inter-token gap, the occupancy of every
    step, the tokens made and the wall time from the first request queued to the last finished."""

    requests: int
    concurrency: int
    ttft_ms: tuple[float, ...]
    tpot_ms: tuple[float, ...]  # requests of a single token have none
    itl_ms: tuple[float, ...]
    occupancy: tuple[int, ...]
    tokens: int
    wall_s: float
    kv_blocks: int
    page_size: int = PAGE

    @property
    def throughput(self) -> float:
        """Tokens generated per second of the run, every request's."""
        return self.tokens / self.wall_s if self.wall_s > 0 else float("nan")

    def fields(self) -> dict[str, Any]:
        """The record's serving fields (``records.ResultRecord``)."""
        ttft, tpot = list(self.ttft_ms), list(self.tpot_ms)
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "throughput_tokens_per_s": self.throughput,
            **{f"request_ttft_p{q}_ms": _percentile(ttft, q) for q in (50, 90, 99)},
            **{f"tpot_p{q}_ms": _percentile(tpot, q) for q in (50, 90, 99)},
            "request_itl_p99_ms": _percentile(list(self.itl_ms), 99),
            "occupancy_mean": statistics.fmean(self.occupancy) if self.occupancy else None,
            "occupancy_max": max(self.occupancy, default=None),
            "kv_blocks": self.kv_blocks,
            "kv_block_tokens": self.page_size,
        }


SERVING_FIELDS = tuple(
    Serving(0, 0, (), (), (), (), 0, 0.0, 0).fields()
)  # the record's keys, for a variant that does not serve


class ServeRun:
    """One ``generate_batch`` of a request's rows (see the module docstring)."""

    def __init__(self, model: PreTrainedModel, request: Request, concurrency: int):
        self.model = model
        self.request = request
        self.concurrency = concurrency
        self.occupancy: list[int] = []

    def prompts(self) -> list[list[int]]:
        """Each row without its left padding."""
        ids, mask = self.request.prompts.cpu(), self.request.attention_mask
        rows = [ids[r] if mask is None else ids[r][mask[r].cpu().bool()] for r in range(int(ids.shape[0]))]
        return [row.tolist() for row in rows]

    def _count(self, _module: torch.nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        seq_lens = kwargs.get("cu_seq_lens_q")
        if isinstance(seq_lens, torch.Tensor):
            self.occupancy.append(int(seq_lens.shape[0]) - 1)  # the shape: no read of the device

    def config(self, longest: int) -> Any:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        per_request = -(-(longest + self.request.max_new_tokens) // PAGE)
        return ContinuousBatchingConfig(
            page_size=PAGE,
            num_blocks=per_request * self.concurrency + 1,
            max_batch_tokens=max(longest, 1) * self.concurrency,
            max_requests_per_batch=self.concurrency,
        )

    def __call__(self, steps: ForwardSteps) -> tuple[torch.Tensor, Serving]:
        request = self.request
        prompts = self.prompts()
        eos = request.eos_ids.tolist()
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=request.max_new_tokens,
            do_sample=False,
            eos_token_id=eos if eos else None,
            pad_token_id=request.pad_id,
        )
        cb = self.config(max(len(p) for p in prompts))
        handle = self.model.register_forward_pre_hook(self._count, with_kwargs=True)
        try:
            with model_eos_cleared(self.model):
                outputs = cast(Any, self.model).generate_batch(
                    inputs=prompts,
                    generation_config=config,
                    continuous_batching_config=cb,
                    record_timestamps=True,
                    warmup=False,
                )
        finally:
            handle.remove()
        results = list(outputs.values())
        failed = [r for r in results if r.error is not None]
        if len(results) != len(prompts) or failed:
            why = failed[0].error if failed else f"{len(results)} of {len(prompts)} requests came back"
            raise DecodePerfError(f"continuous batching (generate_batch) failed: {str(why).splitlines()[0]}")
        return self._tokens(results), self._serving(results, cb.num_blocks)

    def _tokens(self, results: list[Any]) -> torch.Tensor:
        """Every request's tokens, a row each, padded after its stop as generate() pads: [B, P + width]."""
        width = max(len(r.generated_tokens) for r in results)
        rows = [list(r.generated_tokens) + [self.request.pad_id] * (width - len(r.generated_tokens)) for r in results]
        generated = torch.tensor(rows, dtype=torch.long).reshape(len(results), width)
        return torch.cat([self.request.prompts, generated.to(self.request.prompts.device)], dim=1)

    def _serving(self, results: list[Any], blocks: int) -> Serving:
        ttft, tpot, itl = [], [], []
        for r in results:
            stamps = list(r.timestamps or [])
            if not stamps:
                continue
            ttft.append(1e3 * (stamps[0] - r.created_time))
            gaps = [1e3 * (b - a) for a, b in itertools.pairwise(stamps)]
            itl += gaps
            if gaps:
                tpot.append(sum(gaps) / len(gaps))
        start = min(r.created_time for r in results)
        end = max(r.lifespan[1] for r in results)
        tokens = sum(len(r.generated_tokens) for r in results)
        return Serving(
            len(results), self.concurrency, tuple(ttft), tuple(tpot), tuple(itl), tuple(self.occupancy), tokens,
            end - start, blocks,
        )  # fmt: skip


def serve(model: PreTrainedModel, request: Request, concurrency: int, steps: ForwardSteps) -> DecodeOutput:
    """The request's rows served by continuous batching, ``concurrency`` at once; ``steps`` observes the forwards."""
    tokens, serving = ServeRun(model, request, concurrency)(steps)
    return DecodeOutput(
        tokens=tokens,
        prompt_len=request.prompt_len,
        steps=steps.forwards,
        extra_steps=0,
        host_reads=0,
        note=f"transformers continuous batching (generate_batch), {concurrency} request(s) at once",
        serving=serving,
    )
