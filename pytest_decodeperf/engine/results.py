"""A measured variant: what the runner returns, and the JSON record it becomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from ..records import ResultRecord
from .decode.loop import DecodeOutput
from .decode.request import SERVING_FIELDS, SPECULATION_FIELDS
from .measure.counting import SyncReport
from .measure.profiling import ProfileStats
from .measure.rounds import Measurement
from .parallel.tensor_parallel import TPInfo
from .parity.compare import ParityReport
from .roofline.variant import ROOFLINE_FIELDS, Roofline
from .spec.attention import COMPILED_KERNELS, UNCOUNTED
from .spec.models import model_label
from .spec.variants import Variant
from .spec.workload import Workload


@dataclass
class VariantResult:
    """A measured variant: its measurement, its tokens, and its parity verdict against baseline."""

    variant: Variant
    device: torch.device
    workload: Workload
    measurement: Measurement
    parity: ParityReport | None  # None: baseline itself, or parity not asked for
    profile: ProfileStats | None = None  # CUDA only: syncs and GPU idle of one untimed generation
    roofline: Roofline | None = None
    syncs: SyncReport | None = None  # blocking reads per decode step, counted in one untimed generation
    threads: int | None = None  # torch threads while measuring
    tp: TPInfo | None = None  # None: one process, no ranks

    @property
    def output(self) -> DecodeOutput:
        return self.measurement.last

    @property
    def parity_verdict(self) -> str:
        if self.parity is None:
            return "n/a"
        return "pass" if self.parity.ok else "fail"

    def record(self, test: str | None = None) -> ResultRecord:
        """The JSON record: the variant's fields, then each part's own (``fields()``)."""
        m, v, out = self.measurement, self.variant, self.output
        notes = [n for n in (out.note, self.roofline.note if self.roofline else "") if n]
        if self.syncs is None and v.stream == "hf-serve":
            notes.append("syncs not counted: continuous batching runs its forwards in transformers' own thread")
        elif self.syncs is None and v.attn in COMPILED_KERNELS:
            notes.append(UNCOUNTED)
        elif self.syncs is None and not v.is_hf:
            notes.append("syncs not counted under torch.compile")
        fields: dict[str, Any] = {
            "test": test or f"engine[{v.id}]",
            "model": v.model,
            "model_label": model_label(v.model),
            "cache": v.cache,
            "stream": v.stream,
            "batch_size": v.batch_size,
            "new_tokens": v.new_tokens,
            "stop": v.stop,
            "prompt_len": v.prompt_len,
            "prompts": v.prompts,
            "prompt_lengths": list(self.workload.prompt_lengths),
            "compile": v.compile,
            "dtype": v.dtype,
            "attn": v.attn,
            "device": self.device.type,
            "parity": self.parity_verdict,
            "steps": out.steps,
            "extra_steps": out.extra_steps,
            "generated_tokens": out.new_tokens,
            "threads": self.threads if self.threads is not None else torch.get_num_threads(),
            "note": "; ".join(notes),
            "stop_reads": out.host_reads,
            "compiled_graphs": m.compile_stats.get("unique_graphs") if v.compile else None,
            "graph_breaks": m.compile_stats.get("graph_breaks") if v.compile else None,
            "canary_ms": None,
            "canary_samples_ms": [],
            **m.fields(),
            **(self.syncs.fields() if self.syncs is not None else SyncReport.absent()),
            **(self.profile.fields() if self.profile is not None else ProfileStats.absent()),
            **(self.roofline.fields(m.ms_per_token) if self.roofline else dict.fromkeys(ROOFLINE_FIELDS)),
            **(self.tp if self.tp is not None else TPInfo(v.tp, 1, None)).fields(),
            "paired_with": v.paired().stream if m.reference_rounds else None,
            "draft": v.draft,
            "lookup_tokens": v.lookup_tokens if v.stream == "hf-prompt-lookup" else None,
            **(out.speculation.fields() if out.speculation is not None else dict.fromkeys(SPECULATION_FIELDS)),
            **(out.serving.fields() if out.serving is not None else dict.fromkeys(SERVING_FIELDS)),
            **m.serving_samples(),
        }
        return cast(ResultRecord, fields)
