"""The parity gate: a variant must return the reference's tokens (see ``reference.py``).

On mismatch the report names, per divergent row, the first position where the tokens differ,
both tokens there, and both rows' lengths (generated tokens up to and including the first EOS),
so a lagged policy that trims the wrong step reads as an off-by-one at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..decode.request import row_lengths

__all__ = ["Divergence", "ParityReport", "check_parity", "row_lengths"]

MAX_ROWS_SHOWN = 5


@dataclass(frozen=True)
class Divergence:
    row: int
    position: int  # index into the generated tokens (0 = first new token)
    expected: int | None  # None: the sequence had already ended here
    actual: int | None
    expected_length: int
    actual_length: int
    margin: float | None = None  # the reference's logit(expected) - logit(actual) there, when judged

    def __str__(self) -> str:
        def tok(value: int | None) -> str:
            return "<end>" if value is None else str(value)

        margin = f", logit margin {self.margin:.4g}: a confident disagreement" if self.margin is not None else ""
        return (
            f"row {self.row}: first divergence at generated position {self.position}: "
            f"expected {tok(self.expected)}, got {tok(self.actual)} "
            f"(lengths: expected {self.expected_length}, got {self.actual_length}){margin}"
        )


@dataclass(frozen=True)
class ParityReport:
    label: str
    divergences: list[Divergence] = field(default_factory=list)
    expected_shape: tuple[int, ...] = ()
    actual_shape: tuple[int, ...] = ()
    reference: str = "baseline"  # what the variant was held to
    numerics: list[str] = field(default_factory=list)  # divergences judged near-ties (see reference.py)

    @property
    def ok(self) -> bool:
        # A near-tie may end a row one step apart: then the widths differ, and that is numerics too.
        return not self.divergences and (self.expected_shape == self.actual_shape or bool(self.numerics))

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            tie = f"; {len(self.numerics)} near-tie(s) judged numerics: {self.numerics[0]}" if self.numerics else ""
            return f"parity ok: {self.label} matches {self.reference} ({self.actual_shape[1]} new tokens){tie}"
        lines = [
            f"parity FAILED: {self.label} differs from {self.reference} in {len(self.divergences)} row(s); "
            f"generated shape expected {self.expected_shape}, got {self.actual_shape}"
        ]
        lines += [f"  {d}" for d in self.divergences[:MAX_ROWS_SHOWN]]
        if len(self.divergences) > MAX_ROWS_SHOWN:
            lines.append(f"  ... and {len(self.divergences) - MAX_ROWS_SHOWN} more rows")
        return "\n".join(lines)


def check_parity(
    expected: torch.Tensor,
    actual: torch.Tensor,
    eos_ids: list[int] | torch.Tensor,
    label: str = "variant",
    reference: str = "baseline",
) -> ParityReport:
    """Compare generated tokens [B, N] of a variant (``actual``) with the baseline's (``expected``)."""
    expected = expected.detach().cpu()
    actual = actual.detach().cpu()
    eos = torch.as_tensor(eos_ids).cpu() if isinstance(eos_ids, torch.Tensor) else eos_ids
    if expected.shape[0] != actual.shape[0]:
        raise ValueError(f"batch sizes differ: expected {expected.shape[0]} rows, got {actual.shape[0]}")
    exp_len, act_len = row_lengths(expected, eos), row_lengths(actual, eos)
    divergences = []
    width = max(expected.shape[1], actual.shape[1])
    for row in range(expected.shape[0]):
        e_row, a_row = expected[row].tolist(), actual[row].tolist()
        for pos in range(width):
            e = e_row[pos] if pos < len(e_row) else None
            a = a_row[pos] if pos < len(a_row) else None
            if e != a:
                divergences.append(Divergence(row, pos, e, a, exp_len[row], act_len[row]))
                break
    return ParityReport(label, divergences, tuple(expected.shape), tuple(actual.shape), reference)
