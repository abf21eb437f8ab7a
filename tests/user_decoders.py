"""Decoders a user could write, right and wrong: imported by tests/test_decoders.py, and copied as the conftest of its
end-to-end runs (so this file must stand alone: only torch and pytest_decodeperf)."""

from __future__ import annotations

from typing import Any

import torch

from pytest_decodeperf import DecoderInputs, decoder


def _loop(model: Any, inputs: DecoderInputs, extra_read: bool = False, early: bool = False) -> torch.Tensor:
    ids, n = inputs.input_ids, inputs.max_new_tokens
    batch, prompt_len = ids.shape
    out = torch.full((batch, n), inputs.pad_token_id, dtype=torch.long, device=ids.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    pad = torch.full((), inputs.pad_token_id, dtype=torch.long, device=ids.device)
    tokens, start = ids, 0
    for step in range(n):
        end = prompt_len + step
        logits = model(tokens, **inputs.forward_kwargs(start, end)).logits[:, -1]
        token = torch.where(finished, pad, logits.argmax(-1))
        out[:, step] = token
        finished |= torch.isin(token, inputs.eos_token_ids)
        if extra_read:
            _ = int(token[0].item())  # THE HIDDEN READ: a blocking device read in every step
        if finished.all():  # the stop check: one read of a one-element bool a step
            return out[:, : step if early else step + 1]
        if inputs.cache is None:  # no cache: the whole sequence again
            tokens, start = torch.cat([ids, out[:, : step + 1]], dim=1), 0
        else:
            tokens, start = token[:, None], end
    return out


@decoder("t-greedy")
def greedy(model: Any, inputs: DecoderInputs) -> torch.Tensor:
    """A plain greedy loop with a blocking stop check every step."""
    return _loop(model, inputs)


@decoder("t-extra-read")
def extra_read(model: Any, inputs: DecoderInputs) -> torch.Tensor:
    return _loop(model, inputs, extra_read=True)


@decoder("t-off-by-one")
def off_by_one(model: Any, inputs: DecoderInputs) -> torch.Tensor:
    return _loop(model, inputs, early=True)


@decoder("t-raises")
def raises(model: Any, inputs: DecoderInputs) -> torch.Tensor:
    model(inputs.input_ids, **inputs.forward_kwargs(0, inputs.prompt_len))
    raise ValueError("my decoder broke")  # THE RAISE


@decoder("t-with-prompt")
def with_prompt(model: Any, inputs: DecoderInputs) -> torch.Tensor:
    new = _loop(model, inputs)  # then padded to max_new_tokens, and the prompt kept in front: too wide
    rest = torch.full((inputs.batch_size, inputs.max_new_tokens - int(new.shape[1])), inputs.pad_token_id)
    return torch.cat([inputs.input_ids, new, rest.to(new.device)], dim=1)


@decoder("t-floats")
def floats(model: Any, inputs: DecoderInputs) -> torch.Tensor:
    return _loop(model, inputs).float()


def _ping_pong(model: Any, inputs: DecoderInputs, wait: bool) -> torch.Tensor:
    """The article's pipelined loop through the device seam: step i launched on stream i % 2, step i-1's flag read
    from pinned memory after step i is launched. ``wait=False``: the bug of launching without waiting on the other
    stream (a race on a GPU, caught by the CUDA simulator on the CPU)."""
    rt = inputs.runtime
    ids, n = inputs.input_ids, inputs.max_new_tokens
    batch, prompt_len = ids.shape
    out = torch.full((batch, n), inputs.pad_token_id, dtype=torch.long, device=ids.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    pad = torch.full((), inputs.pad_token_id, dtype=torch.long, device=ids.device)
    streams = rt.side_streams(2) if rt.has_streams else [None, None]
    flags = [rt.pinned_flag(), rt.pinned_flag()]
    events = [rt.new_event(), rt.new_event()]
    origin = rt.current_stream()
    for stream in streams:
        rt.wait_stream(stream, origin)
    tokens, start, last = ids, 0, streams[0]
    for step in range(n):
        stream = streams[step % 2]
        if wait:
            rt.wait_stream(stream, streams[(step - 1) % 2])
        with rt.stream(stream):
            end = prompt_len + step
            logits = model(tokens, **inputs.forward_kwargs(start, end)).logits[:, -1]
            token = torch.where(finished, pad, logits.argmax(-1))
            out[:, step] = token
            finished |= torch.isin(token, inputs.eos_token_ids)
            rt.copy_to_host(flags[step % 2], finished.all())
            rt.record(events[step % 2])
        last, tokens, start = stream, token[:, None], end
        if step > 0:
            rt.synchronize_event(events[(step - 1) % 2])
            if rt.read_flag(flags[(step - 1) % 2]):  # step i-1's flag, read after step i was launched
                rt.wait_stream(rt.current_stream(), last)
                return out[:, :step]
    rt.wait_stream(rt.current_stream(), last)
    return out


@decoder("t-pipelined")
def pipelined(model: Any, inputs: DecoderInputs) -> torch.Tensor:
    return _ping_pong(model, inputs, wait=True)


@decoder("t-no-wait")
def no_wait(model: Any, inputs: DecoderInputs) -> torch.Tensor:
    return _ping_pong(model, inputs, wait=False)
