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
from typing import Any, cast

import torch
from transformers import GenerationConfig, PreTrainedModel

from ...errors import DecodePerfError
from .observe import ForwardSteps
from .request import DecodeOutput, Request, Serving

PAGE = 16  # tokens a block of the paged cache holds (Serving.page_size's default)


class ServeSession:
    """A running continuous-batching manager for one request's shape: started once, each ``run`` submits the rows
    as requests and waits for all of them, ``close`` stops it.

    A server is measured serving, not starting or stopping: ``generate_batch`` starts a manager, allocates its
    cache and, on the way out, waits for the manager's loop to notice the stop (up to 0.1 s) and collects garbage,
    which would be most of a small run's time. So the manager is made and started outside the timed region when a
    warmup round runs first (the runner's warmup), and stopped by the runner once the variant is measured. CUDA graphs
    are off: a replayed graph calls no module hook, and the hooks are how its steps are seen.
    """

    def __init__(self, model: PreTrainedModel, request: Request, concurrency: int):
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.model = model
        self.request = request
        self.concurrency = concurrency
        self.prompts = _rows(request)
        longest = max(len(p) for p in self.prompts)
        per_request = -(-(longest + request.max_new_tokens) // PAGE)
        self.blocks = per_request * concurrency + 1
        eos = list(request.host_eos_ids)
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=request.max_new_tokens,
            do_sample=False,
            eos_token_id=eos if eos else -1,  # -1: none (None would fall back to the model config's EOS)
            pad_token_id=request.pad_id,
        )
        cb = ContinuousBatchingConfig(
            page_size=PAGE,
            num_blocks=self.blocks,
            max_batch_tokens=max(longest, 1) * concurrency,
            max_requests_per_batch=concurrency,
            use_cuda_graph=False,
            use_async_batching=False,
        )
        self.manager: Any = cast(Any, model).init_continuous_batching(
            generation_config=config, continuous_batching_config=cb
        )
        self.manager.start()

    def run(self) -> list[Any]:
        """Every row submitted as a request; their outputs in the rows' order once all have finished."""
        ids = self.manager.add_requests(
            inputs=self.prompts, max_new_tokens=self.request.max_new_tokens, record_timestamps=True
        )
        done: dict[str, Any] = {}
        while len(done) < len(ids):
            result = self.manager.get_result(timeout=1)
            if result is None:
                if not self.manager.is_running():
                    raise DecodePerfError("continuous batching (transformers' manager) stopped before its requests")
                continue
            if result.is_finished():
                done[result.request_id] = result
        failed = [r for r in done.values() if r.error is not None]
        if failed:
            why = (str(failed[0].error).strip().splitlines() or ["an error"])[0]
            raise DecodePerfError(f"continuous batching: request {failed[0].request_id} failed: {why}")
        return [done[i] for i in ids]

    def close(self) -> None:
        if self.manager.is_running():
            self.manager.stop(block=True, timeout=60)


def _rows(request: Request) -> list[list[int]]:
    """Each row of the request without its left padding: a request's own prompt."""
    ids, mask = request.prompts.cpu(), request.attention_mask
    rows = [ids[r] if mask is None else ids[r][mask[r].cpu().bool()] for r in range(int(ids.shape[0]))]
    return [row.tolist() for row in rows]


class Occupancy:
    """How many requests each of the model's forwards carried (a pre-hook; the shape of ``cu_seq_lens_q``, no read)."""

    def __init__(self, model: torch.nn.Module):
        self.steps: list[int] = []
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module: torch.nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        seq_lens = kwargs.get("cu_seq_lens_q")
        if isinstance(seq_lens, torch.Tensor):
            self.steps.append(int(seq_lens.shape[0]) - 1)

    def remove(self) -> None:
        self._handle.remove()


def serve(session: ServeSession, steps: ForwardSteps) -> DecodeOutput:
    """One run of ``session``'s requests; ``steps`` observes the model's forwards (in the manager's thread)."""
    request = session.request
    occupancy = Occupancy(session.model)
    try:
        results = session.run()
    finally:
        occupancy.remove()
    width = max(len(r.generated_tokens) for r in results)
    rows = [list(r.generated_tokens) + [request.pad_id] * (width - len(r.generated_tokens)) for r in results]
    generated = torch.tensor(rows, dtype=torch.long).reshape(len(results), width)
    return DecodeOutput(
        tokens=torch.cat([request.prompts, generated.to(request.prompts.device)], dim=1),
        prompt_len=request.prompt_len,
        steps=steps.forwards,
        extra_steps=0,
        host_reads=0,
        note=f"transformers continuous batching, {session.concurrency} request(s) at once",
        serving=_serving(results, session, occupancy.steps),
    )


def _serving(results: list[Any], session: ServeSession, occupancy: list[int]) -> Serving:
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
        len(results), session.concurrency, tuple(ttft), tuple(tpot), tuple(itl), tuple(occupancy), tokens,
        end - start, session.blocks,
    )  # fmt: skip
