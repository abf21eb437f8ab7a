"""The independent reference every variant is held to: transformers' own generate(), greedy.

Parity against the engine's own baseline alone cannot see a model the loop drives wrongly (a
state-space model fed a cache it ignores gives wrong tokens in every stream mode
alike). So every variant, baseline included, is compared with generate() on the same prompts
with the workload's stops, the model's own EOS cleared (generate() falls back to it otherwise).

Across implementations (another cache, generate()'s loop) bit-for-bit equality is not always
owed: on a GPU in bf16 two correct kernels can pick different tokens at a near-tie. A divergence
is judged by the reference model's logits at the first divergent position, as vLLM's
``check_logprobs_close`` does: both tokens in the top 5 and a margin within a few units of the
dtype's rounding is numerics (a pass, with a note); anything else is a bug and fails.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel

from ..decode.forward import ForwardCall
from .compare import Divergence, ParityReport

TOP_K = 5
TIE_EPS = 8  # a near-tie: the two logits within this many dtype epsilons of the largest logit


@dataclass(frozen=True)
class Judged:
    """A divergence from the reference, judged by the reference's logits at that position."""

    divergence: Divergence
    margin: float  # logit(reference token) - logit(variant token); None tokens: inf
    numerics: bool  # a near-tie: both tokens in the top k and the margin within rounding

    def __str__(self) -> str:
        d = self.divergence
        verdict = "a near-tie (numerics)" if self.numerics else "a confident disagreement"
        return (
            f"row {d.row} position {d.position}: {d.expected} vs {d.actual}, logit margin {self.margin:.3g}, {verdict}"
        )


def judge(
    model: PreTrainedModel,
    prompts: torch.Tensor,
    expected: torch.Tensor,
    divergence: Divergence,
    attention_mask: torch.Tensor | None = None,
) -> Judged:
    """Look at the reference model's next-token logits on the common prefix of the two rows.

    A left-padded row is judged without its padding (``attention_mask`` [B, P], 1 = real token).
    """
    e, a = divergence.expected, divergence.actual
    if e is None or a is None:
        return Judged(divergence, float("inf"), False)  # one side ended: a length bug, not numerics
    row = divergence.row
    prompt = prompts[row].cpu()
    if attention_mask is not None:
        prompt = prompt[attention_mask[row].cpu().bool()]
    prefix = torch.cat([prompt, expected[row, : divergence.position].cpu()])[None]  # [1, P + pos]
    device = next(model.parameters()).device
    length = int(prefix.shape[1])
    call = ForwardCall(model, 1, length, device)  # as every forward is called: with its positions
    with torch.no_grad():
        logits = model(prefix.to(device), **call.kwargs(0, length, None)).logits[0, -1].float().cpu()  # [V]
    top = set(torch.topk(logits, TOP_K).indices.tolist())
    margin = float(logits[e] - logits[a])
    dtype = next(model.parameters()).dtype
    tolerance = TIE_EPS * torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps
    near = abs(margin) <= tolerance * max(1.0, float(logits.abs().max()))
    return Judged(divergence, margin, bool(e in top and a in top and near))


def judged_report(
    model: PreTrainedModel,
    prompts: torch.Tensor,
    expected: torch.Tensor,
    report: ParityReport,
    attention_mask: torch.Tensor | None = None,
) -> ParityReport:
    """``report`` with each divergence judged: near-ties become notes, confident disagreements stay."""
    if report.ok:
        return report
    judged = [judge(model, prompts, expected, d, attention_mask) for d in report.divergences]
    bugs = [replace(j.divergence, margin=j.margin) for j in judged if not j.numerics]
    ties = [str(j) for j in judged if j.numerics]
    return ParityReport(report.label, bugs, report.expected_shape, report.actual_shape, report.reference, ties)
