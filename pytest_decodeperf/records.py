"""The JSON record of one measured variant: the interchange format of reports, asv and plots.

``--decodeperf-json`` writes ``{"machine": MachineInfo, "results": [ResultRecord, ...]}``; the asv
history writer, the regression gate and the plots read the same records. Under ``--decodeperf-ab``
it writes ``{"machine": MachineInfo, "ab": [ABRecord, ...]}``: the A/B's verdicts, one per item.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:  # annotations are strings here: Python 3.10 runs this module without typing.NotRequired
    from typing_extensions import NotRequired


class MachineInfo(TypedDict, total=False):
    """What a run measured on: every number depends on it (also asv's ``machine.json``)."""

    hostname: str  # socket.gethostname()
    platform: str  # platform.platform()
    python: str  # the interpreter's version
    cpu: str  # the CPU's model name
    num_cpu: int  # logical CPUs
    ram_bytes: int  # physical memory
    threads: int  # torch.get_num_threads() when the run started
    torch: str  # torch.__version__
    transformers: str  # transformers.__version__
    cuda: str | None  # torch.version.cuda (None: a CPU build)
    device: str  # "cpu" or "cuda"
    gpu_name: str | None  # CUDA: the device's name
    gpu_driver: str | None  # CUDA: nvidia-smi's driver version
    # CUDA: this GPU's clocks as nvidia-smi reads them (None: not readable): "sm"/"mem" now, "max_sm"/"max_mem",
    # "app_sm"/"app_mem" (application clocks: what it runs at under load unless clocks are locked)
    gpu_clocks_mhz: dict[str, int] | None
    cpu_governor: str | None  # cpufreq's scaling governor of CPU 0 (None: the kernel does not say, as in most VMs)
    bandwidth_gb_per_s: float | None  # copy bandwidth measured once per run on the device (engine/roofline/analytic.py)
    canary_ms: float | None  # the drift canary: a fixed matmul loop's median ms (engine/device/machine.py)


class ResultRecord(TypedDict):
    """One measured variant (a pytest item of a ``decode_perf`` test, or a ``decodeperf run`` row)."""

    test: str  # pytest nodeid (or "engine[<variant id>]" outside pytest)
    model: str
    model_label: str  # how ids and tables show it: a checkpoint by its directory's name (older records: absent)
    cache: str
    stream: str
    batch_size: int
    new_tokens: int  # max new tokens asked for
    stop: str  # "eos" or "none"
    prompt_len: int  # the longest row's prompt tokens (older records: absent, meaning 4)
    prompts: str  # "random", "mixed" (left padded) or "text" (older records: absent, meaning "random")
    prompt_lengths: list[int]  # each row's real prompt length
    compile: bool | str  # False, True (default mode) or a torch.compile mode
    dtype: str
    # the attention kernel asked for, transformers' attn_implementation: "sdpa", "eager" or "flex_attention" (None:
    # the model's default, sdpa where its class supports it; older records: absent, meaning the same)
    attn: str | None
    device: str
    parity: str  # "pass" | "fail" | "n/a"
    tokens_per_s: float  # median over rounds
    ms_per_token: float  # median decode ms per step (prefill excluded); NaN (null in JSON) with no decode step
    prefill_ms: float | None  # median
    steps: int  # forward passes run, prefill and any lagged extra step included
    extra_steps: int
    generated_tokens: int  # new tokens kept per row (the trimmed width)
    peak_allocated_bytes: int | None  # CUDA only
    peak_reserved_bytes: int | None
    rounds: int
    warmup_s: list[float]  # warmup (and compile) rounds, reported apart
    samples_s: list[float]  # wall seconds of each timed round
    samples_ms_per_token: list[float]
    samples_prefill_ms: list[float]
    # Every decode step timed in the same rounds (engine/measure/rounds.py; CUDA events read after the round). Older
    # records: absent. Inter-token latency (ITL): a step's mark less the one before; percentiles over all rounds.
    ttft_ms: float | None  # time to first token, median over rounds: the prefill's mark (the same as prefill_ms)
    itl_p50_ms: float | None
    itl_p90_ms: float | None
    itl_p99_ms: float | None
    samples_itl_p90_ms: list[float]  # per timed round, that round's p90 (asv's samples)
    samples_itl_p99_ms: list[float]
    spread_pct: float  # IQR of tokens/s over its median, in percent
    # Half the 95% interval of the median (order statistics), in percent: of the paired ratio to the
    # baseline when its rounds alternated with the baseline's, else of tokens/s (older records: absent)
    precision_pct: float
    unstable: bool  # precision_pct over 5% (older records: spread over 10%): the table shows no clean speedup
    # tok/s over the baseline's, the median of rounds run alternately with the baseline's (None: the baseline
    # itself, or not paired), and its 95% interval (older records: absent)
    vs_baseline: float | None
    vs_baseline_low: float | None
    vs_baseline_high: float | None
    threads: int  # torch threads while measuring
    note: str
    stop_reads: int  # blocking host reads of the stop flag in one generation
    syncs_per_token: float | None  # CUDA: host-device syncs per token position (torch.profiler)
    draining_syncs_per_token: float | None  # CUDA: of those, cudaStream/DeviceSynchronize (not the lagged event waits)
    # Blocking device reads per decode step, counted by op in one untimed generation (engine/measure/syncs.py);
    # None under torch.compile. "hidden": not the stop policy's declared flag read.
    syncs_per_step: float | None  # hidden reads, mean per decode step
    max_syncs_per_step: int | None  # hidden reads in the worst decode step
    flag_reads_per_step: float | None  # the stop policy's declared flag reads per decode step
    syncs_outside_steps: int | None  # before the first step or after the loop
    sync_budget: int | None  # hidden reads allowed per decode step (None: not gated)
    sync_sites: list[str]  # "file:line op xN" of the hidden reads
    gpu_idle_fraction: float | None  # CUDA: device idle time / device window of one generation
    gpu_idle_us_per_step: float | None
    compiled_graphs: int | None  # compiled variants: graphs dynamo compiled while measuring (recompiles show here)
    graph_breaks: int | None
    # The decode roofline (engine/roofline/analytic.py): bytes a decode step must move (weights, KV read and
    # written), the device's measured copy bandwidth, and what the measured ms/step achieves against it.
    bytes_per_step: float | None  # weight + kv + state bytes per step (below)
    # What a step reads (engine/roofline/weights.py): dense matrices and the LM head whole, one row per token of each
    # embedding table, the experts its routers picked (distinct per MoE layer across the batch, counted in an
    # untimed generation: engine/roofline/routing.py). Older records: absent.
    weight_bytes_per_step: float | None
    kv_bytes_per_step: float | None  # K/V read (the attended positions, or a static cache's whole buffer) + written
    state_bytes_per_step: float | None  # linear-attention/conv/SSM state, read and written whole (None: none)
    weight_bytes_resident: int | None  # the parameters the model holds (tied storage once)
    active_experts_per_step: float | None  # mean routed experts a decode step reads, all MoE layers (None: no MoE)
    routed_experts: int | None  # routed experts the model holds, all MoE layers
    bandwidth_gb_per_s: float | None
    floor_ms_per_step: float | None  # bytes_per_step / bandwidth: no decode step can be faster
    achieved_gb_per_s: float | None
    bw_fraction: float | None  # achieved / bandwidth
    times_floor: float | None  # ms_per_token / floor_ms_per_step = 1 / bw_fraction: lower is better (asv)
    kv_cache_bytes: int | None  # static cache: the nbytes its tensors hold after the run
    kv_cache_bytes_analytic: int | None  # what the config says a static cache of this length allocates
    kv_cache_allocated_bytes: int | None  # CUDA, static cache: the bytes it asked the caching allocator for
    generation_peak_bytes: int | None  # CUDA: the memory round's peak over what was resident when it began
    canary_ms: float | None  # the run's drift canary (machine speed), set when history is written
    canary_samples_ms: list[float]  # its timings at the run's start (when an item ran) and end (older: absent)
    # Tensor parallel (engine/parallel/; older records: absent, meaning one process). The times above are
    # each round's slowest rank's; the roofline fields are one rank's (its shards, plus the collectives' payload).
    tp: int  # ranks the model was sharded over (1: not sharded)
    world_size: int  # processes in the launch (torchrun's WORLD_SIZE; 1: one process)
    backend: str | None  # the model's collectives ran on: "nccl" or "gloo" (None: not sharded)
    collectives_per_step: float | None  # collectives a decode step launches on one rank, counted by op
    collective_bytes_per_step: float | None  # their payload bytes (an all-gather's result, the others' input)
    collective_ops: dict[str, float]  # per decode step by kind: {"all_reduce": 8.0, "all_gather": 1.0}
    # What "vs_baseline" alternated with: "baseline" (the plugin's loop), or "hf-generate" for a speculative mode (what
    # speculation saves); None where not paired (older records: absent, meaning "baseline").
    paired_with: str | None
    # Speculative decoding (hf-prompt-lookup, hf-assisted; None for the other modes; older records: absent). Their
    # steps are verify steps, and the counts come from where generate() decides (engine/decode/hf_generate.py).
    draft: str | None  # hf-assisted's draft model
    lookup_tokens: int | None  # hf-prompt-lookup: the most tokens one lookup proposes
    verify_steps: int | None  # the model's forwards, each verifying the proposals and yielding one token more
    draft_steps: int | None  # the draft model's forwards (0: prompt lookup)
    proposed_tokens: int | None  # tokens proposed in one generation
    accepted_tokens: int | None  # of those, the ones the verifier kept
    acceptance_rate: float | None  # accepted / proposed
    mean_accepted_length: float | None  # tokens a verify step yields on average: 1 + accepted / verify steps
    draft_bytes_per_step: float | None  # what one draft step reads (the draft's weights and K/V)
    # Continuous batching (hf-serve; None for the other modes; older records: absent): per request, from transformers'
    # own per-token timestamps (engine/decode/serve.py); each row of the batch is a request.
    requests: int | None  # requests served
    concurrency: int | None  # requests running at once
    throughput_tokens_per_s: float | None  # every request's tokens over the run (first queued to last finished)
    request_ttft_p50_ms: float | None  # time to a request's first token, its queueing included
    request_ttft_p90_ms: float | None
    request_ttft_p99_ms: float | None
    tpot_p50_ms: float | None  # time per output token of a request, after its first
    tpot_p90_ms: float | None
    tpot_p99_ms: float | None
    request_itl_p99_ms: float | None  # the gaps between a request's tokens, all requests pooled
    occupancy_mean: float | None  # requests a step carried
    occupancy_max: int | None
    kv_blocks: int | None  # blocks the paged cache was given (sized for the requests), not a count of use
    kv_block_tokens: int | None  # tokens a block holds
    samples_tpot_ms: list[float]  # per timed round, the median request's TPOT (asv's samples; else empty)
    samples_request_ttft_ms: list[float]  # per timed round, the median request's TTFT
    # What the numbers depend on beyond the code (fingerprint.py): torch, transformers, CUDA, driver, GPU and its
    # configured clocks, CPU and governor, threads, Python, as strings; a comparison says when two differ (older
    # records: absent)
    fingerprint: NotRequired[dict[str, str]]


class ABMetric(TypedDict):
    """One metric's A/B verdict (``ab/clustered.py``); ratios are B/A, above 1 is slower."""

    decision: str  # "different_worse" (fails), "different_better", "same" or "unknown" (never fails)
    judged: bool  # False: too noisy to be shown within the gate in the process budget ("not judged")
    ratio: float | None
    ci_low: float | None  # the interval at the run's confidence (99%), simultaneous over its looks
    ci_high: float | None
    processes: int  # process pairs behind it (each one observation)
    pairs: int  # round pairs behind it, all process pairs together
    note: str


class ABRecord(TypedDict):
    test: str  # pytest nodeid
    ref: str  # REF as given (or the default's name); "" when only the environment differs (--decodeperf-ab-python)
    a_commit: str  # "" outside git (an A/B of environments alone)
    b_commit: str
    a_python: str | None  # side A's interpreter, --decodeperf-ab-python (None: the same as B's; older: absent)
    # [A, B] versions of python, torch, transformers, and of every distribution whose version differs between
    # the sides (None: absent on that side; older records: absent)
    versions: dict[str, list[str | None]]
    gate_pct: float
    failed: bool
    error: str | None  # why the item has no verdict (a side's setup failed, a worker died)
    metrics: dict[str, ABMetric]  # "ms_per_token", "prefill_ms"
    syncs_per_step: list[float | None]  # [A, B], exact: a rise fails
