"""pytest hooks and fixtures: a thin layer over the engine (``engine/runner.py``).

pytest imports this module in every session of every project where the package is installed, so
it imports neither torch nor transformers: the engine is imported when a ``decode_perf`` item is
collected or run, or when ``--decodeperf`` asks for a device.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from .benchmark_support import benchmark_fed, feed_pytest_benchmark
from .errors import DecodePerfError
from .marker import MARKER_DOC, parse_marker, variant_id
from .options import Settings, add_options, load_settings, source_of
from .plots import MISSING_MATPLOTLIB
from .session import DecodePerfSession, ItemOutcome
from .xdist_support import RECORDS_KEY, assign_gpu, check_worker_gpu, pin_worker_gpu

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .ab.session import ABSession
    from .engine.results import VariantResult
    from .engine.spec.variants import Variant

SESSION_KEY = pytest.StashKey[DecodePerfSession]()
MODEL_KEY = pytest.StashKey[Any]()
AB_KEY = pytest.StashKey["ABSession"]()
SKIP_REASON = "decode perf tests need --decodeperf"
MARKER = "decode_perf"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    pin_worker_gpu(config)
    settings = load_settings(config)
    session = DecodePerfSession(settings)
    if settings.enabled:
        try:
            session.device  # noqa: B018 - resolve now: --decodeperf-device=cuda without CUDA is a usage error
        except DecodePerfError as exc:
            raise pytest.UsageError(f"pytest-decodeperf: {exc} (from {source_of(config, 'device')})") from None
        if session.device.type == "cuda":
            check_worker_gpu(config)
        if settings.plot is not None:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise pytest.UsageError(f"pytest-decodeperf: {MISSING_MATPLOTLIB}") from None
        if settings.asv is not None or settings.compare is not None:
            try:
                results_dir = session.asv_results_dir()
                if settings.asv:  # an explicit PATH must be (or go) in an existing writable directory
                    from .options import check_writable_dir

                    check_writable_dir(results_dir)
            except DecodePerfError as exc:
                raise pytest.UsageError(f"pytest-decodeperf: {exc}") from None
        if settings.profile_steps is not None and session.device.type != "cuda":
            raise pytest.UsageError(
                "pytest-decodeperf: --decodeperf-profile-steps needs CUDA (cudaProfilerApi); this run is on "
                f"{session.device.type}"
            )
        if settings.ab is not None or settings.ab_python is not None:
            _configure_ab(config, settings, session.device.type)
        from .tp.hooks import configure as configure_tp

        configure_tp(config, session)  # a rank of torchrun/srun joins the process group here; tp/plugin.py's hooks
    config.stash[SESSION_KEY] = session


def _configure_ab(config: pytest.Config, settings: Settings, device: str) -> None:
    if getattr(config, "workerinput", None) is not None or config.getoption("numprocesses", None):
        raise pytest.UsageError("pytest-decodeperf: --decodeperf-ab runs its own two workers; drop -n (xdist)")
    from .ab.session import ABSession

    try:
        config.stash[AB_KEY] = ABSession(settings, config.rootpath, device)
    except DecodePerfError as exc:
        raise pytest.UsageError(f"pytest-decodeperf: {exc}") from None


def _ab(config: pytest.Config) -> ABSession | None:
    return config.stash.get(AB_KEY, None)


def pytest_collection_finish(session: pytest.Session) -> None:
    ab = _ab(session.config)
    if ab is None:
        return
    marked = [item.nodeid for item in session.items if (p := _item_param(item)) is not None and p[0].tp == 1]
    try:
        ab.start(session.config, session.items, marked)
    except DecodePerfError as exc:
        raise pytest.UsageError(f"pytest-decodeperf: {exc}") from None


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Under --decodeperf-ab: every process pair runs before the items report (each looks its verdict up)."""
    ab = _ab(session.config)
    if ab is None or session.config.option.collectonly:
        return
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        return  # collection failed: pytest stops before any item, so nothing would read a verdict
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    progress = (lambda line: reporter.write_line(line)) if reporter is not None else (lambda line: None)
    ab.run_all(progress)


def pytest_unconfigure(config: pytest.Config) -> None:
    ab = _ab(config)
    if ab is not None:
        ab.close()


def _session(config: pytest.Config) -> DecodePerfSession:
    return config.stash[SESSION_KEY]


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    """With --decodeperf: the device, versions and threads every number of the run depends on."""
    dp = _session(config)
    if not dp.settings.enabled:
        return None
    return [dp.header()]


def _default_model(settings: Settings) -> str:
    from .engine.device.machine import resolve_device
    from .engine.spec.models import default_model_name

    if settings.model_path is not None:
        return settings.model_path
    try:
        return default_model_name(resolve_device(settings.device))
    except DecodePerfError:
        return default_model_name("cpu")


def _default_prompt_lens(settings: Settings) -> tuple[int, ...]:
    from .engine.device.machine import resolve_device
    from .engine.spec.workload import default_prompt_lens

    try:
        return default_prompt_lens(resolve_device(settings.device))
    except DecodePerfError:
        return default_prompt_lens("cpu")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None:
        return
    settings = _session(metafunc.config).settings
    fixturedefs = metafunc.definition.session._fixturemanager.getfixturedefs("decode_model", metafunc.definition) or ()
    custom_model = bool(fixturedefs) and fixturedefs[-1].func is not decode_model.__wrapped__  # type: ignore[attr-defined]
    try:
        variants, parity = parse_marker(
            marker.args,
            dict(marker.kwargs),
            _default_model(settings),
            custom_model,
            _default_prompt_lens(settings),
            settings.prompt_lens,
            settings.dtype,
            settings.tp,
        )
        if settings.enabled:
            from .tp.hooks import select

            variants = select(metafunc.config, _session(metafunc.config), variants, custom_model)
    except DecodePerfError as exc:
        raise pytest.Collector.CollectError(f"{metafunc.definition.nodeid}: {exc}") from None
    if settings.new_tokens is not None:
        variants = list(dict.fromkeys(_with_length(v, settings.new_tokens) for v in variants))
    vary_length = len({v.new_tokens for v in variants}) > 1
    vary_stop = len({v.stop for v in variants}) > 1
    params = [pytest.param((v, parity), id=variant_id(v, vary_length, vary_stop)) for v in variants]
    metafunc.parametrize("_decodeperf_param", params)


def _with_length(variant: Variant, new_tokens: int) -> Variant:
    from dataclasses import replace

    return replace(variant, new_tokens=new_tokens)


def _narrowed_out(variant: Variant, settings: Settings) -> bool:
    return bool(
        (settings.models and variant.model not in settings.models)
        or (settings.caches and variant.cache not in settings.caches)
        or (settings.streams and variant.stream not in settings.streams)
        or (settings.batch_sizes and variant.batch_size not in settings.batch_sizes)
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's, which skips items not using its fixture
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = _session(config).settings
    reporter = _session(config).reporter  # a rank other than a launch's rank 0 feeds nothing
    feeds_benchmark = benchmark_fed(config, settings.benchmark_table) and _ab(config) is None and bool(reporter)
    _check_model_names(config, settings, items)
    keep: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        param = _item_param(item)
        if param is not None and _narrowed_out(param[0], settings):
            deselected.append(item)
            continue
        if item.get_closest_marker(MARKER) is not None and not settings.enabled:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
        elif param is not None and param[0].tp > 1 and _ab(config) is not None:
            item.add_marker(pytest.mark.skip(reason="--decodeperf-ab does not A/B tensor-parallel variants yet"))
        names = getattr(item, "fixturenames", None)
        if feeds_benchmark and param is not None and isinstance(names, list) and "benchmark" not in names:
            names.append("benchmark")  # its rounds feed pytest-benchmark: it is a benchmark
        keep.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = keep


def _check_model_names(config: pytest.Config, settings: Settings, items: list[pytest.Item]) -> None:
    """A ``--decodeperf-models`` name that is neither in the zoo nor a label of a collected test
    is a typo: say so, rather than deselect everything in silence."""
    if not settings.models:
        return
    from .engine.spec.models import MODELS

    labels = {param[0].model for item in items if (param := _item_param(item)) is not None}
    unknown = [m for m in settings.models if m not in MODELS and m not in labels]
    if unknown:
        known = sorted(set(MODELS) | labels)
        raise pytest.UsageError(
            f"pytest-decodeperf: unknown model {', '.join(map(repr, unknown))}: not in the zoo and not a models= label "
            f"of any collected test; choose from: {', '.join(known)} (from {source_of(config, 'models')})"
        )


def _item_param(item: pytest.Item) -> tuple[Variant, bool] | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    value = callspec.params.get("_decodeperf_param")
    return value if isinstance(value, tuple) else None


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def _decodeperf_param() -> tuple[Variant, bool] | None:
    """Replaced by the marker's parametrization; None on unmarked tests."""
    return None


def _param_or_fail(param: tuple[Variant, bool] | None) -> tuple[Variant, bool]:
    if param is None:
        pytest.fail("decode perf fixtures need the @pytest.mark.decode_perf marker on the test", pytrace=False)
    return param


@pytest.fixture
def decode_variant(_decodeperf_param: tuple[Variant, bool] | None) -> Variant:
    """The variant (model, cache, stream mode, batch, length, stop, compile) of this item."""
    return _param_or_fail(_decodeperf_param)[0]


@pytest.fixture
def cache_type(decode_variant: Variant) -> str:
    """The KV-cache type of this item: none, dynamic, static, ..."""
    return decode_variant.cache


@pytest.fixture
def stream_mode(decode_variant: Variant) -> str:
    """The stream mode (stop policy) of this item: baseline, pipelined, deferred, nostop, ..."""
    return decode_variant.stream


@pytest.fixture
def decode_model(request: pytest.FixtureRequest, decode_variant: Variant) -> PreTrainedModel:
    """The model for this item's ``models`` value; override it in conftest.py to measure your own."""
    return _session(request.config).runner.model(decode_variant.model, decode_variant.dtype, decode_variant.tp)


@pytest.fixture
def decode_result(_decodeperf_param: tuple[Variant, bool] | None) -> VariantResult | None:
    """The measured result of this item (tokens, metrics, parity verdict), in the test body.

    The variant is measured in the call phase, after every fixture of the item is set up, so a
    fixture that patches the model is measured too; this value is filled in just before the body runs.
    """
    _param_or_fail(_decodeperf_param)
    return None


@pytest.fixture(autouse=True)
def _decodeperf_autorun(request: pytest.FixtureRequest, _decodeperf_param: tuple[Variant, bool] | None) -> None:
    """Set up the model of every marked item, so the call phase can measure it and a test body may be empty."""
    if _decodeperf_param is not None and _session(request.config).settings.enabled:
        if _ab(request.config) is not None:
            return  # under --decodeperf-ab the two workers set up the model, each in its own tree
        ranks = _session(request.config).ranks
        if ranks is not None and not ranks.runs(_decodeperf_param[0]):
            return  # a rank that sits this item out (tp=1 runs on rank 0 alone)
        request.node.stash[MODEL_KEY] = request.getfixturevalue("decode_model")


def _run_item(item: pytest.Item) -> ItemOutcome | None:
    """Measure the item's variant on the model its fixtures set up (the call phase, before the body)."""
    param = _item_param(item)
    if param is None or MODEL_KEY not in item.stash:
        return None
    session = _session(item.config)
    marker = item.get_closest_marker(MARKER)
    budget = marker.kwargs.get("max_syncs_per_step") if marker is not None else None
    outcome = ItemOutcome(*param, max_syncs_per_step=budget)
    session.run_item(item.nodeid, outcome, item.stash[MODEL_KEY])
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    if outcome.result is not None:
        if "decode_result" in funcargs:
            funcargs["decode_result"] = outcome.result
        feed_pytest_benchmark(item, session.records[-1])
    return outcome


# --- outcome, reports -------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    ab = _ab(item.config)
    param = _item_param(item)
    if ab is not None and param is not None:
        verdict = ab.verdict(item.nodeid)
        result = yield
        if verdict is not None and verdict.failed:
            pytest.fail(f"A/B against {ab.sides.against}: {verdict.line()}", pytrace=False)
        return result
    outcome = _run_item(item)
    if outcome is not None and outcome.error is not None:
        pytest.fail(outcome.error, pytrace=False)
    result = yield
    if outcome is not None and outcome.result is not None and outcome.result.parity is not None:
        if not outcome.result.parity.ok:
            pytest.fail(str(outcome.result.parity), pytrace=False)
    if outcome is not None and outcome.result is not None and outcome.result.syncs is not None:
        if outcome.result.syncs.over_budget:
            pytest.fail(outcome.result.syncs.message(outcome.result.variant.id), pytrace=False)
    return result


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Under --decodeperf-ab the body is not run in the controller: it has no model, only a verdict."""
    if _ab(pyfuncitem.config) is not None and _item_param(pyfuncitem) is not None:
        return True
    return None


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _session(config).reporter:
        return
    ab = _ab(config)
    if ab is not None and ab.summary():
        terminalreporter.write_sep("=", "decode perf A/B")
        for line in ab.summary():
            terminalreporter.write_line(line)
    session = _session(config)
    if session.records:
        terminalreporter.write_sep("=", "decode perf")
        terminalreporter.write_line(session.summary())
    for message in [*session.messages, *(f"decode perf: not run: {note}" for note in session.tp_notes)]:
        terminalreporter.write_line(message)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    dp = _session(config)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand records to the controller
        workeroutput[RECORDS_KEY] = json.dumps(dp.records)
        return
    if not dp.reporter:
        return  # rank 0 of the launch writes
    ab = _ab(config)
    if ab is not None and ab.records() and dp.settings.json is not None:
        dp.write_json(dp.settings.json, ab=ab.records())
        dp.messages.append(f"decode perf A/B verdicts written to {dp.settings.json}")
    if not dp.records:
        return
    if dp.settings.json is not None:
        dp.write_json(dp.settings.json)
        dp.messages.append(f"decode perf results written to {dp.settings.json}")
    if dp.settings.asv is not None or dp.settings.compare is not None:
        try:
            if not dp.history(config.rootpath):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        except DecodePerfError as exc:
            dp.messages.append(f"decode perf: asv history: {exc}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if dp.settings.plot is not None:
        from .plots import write_plots

        dp.settings.plot.mkdir(parents=True, exist_ok=True)
        for path in write_plots(dp.records, dp.settings.plot):
            dp.messages.append(f"decode perf plot written to {path}")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    settings = _session(node.config).settings
    if settings.enabled:
        assign_gpu(node, settings.share_gpu, settings.device in ("auto", "cuda"), max(settings.tp or (1,)))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    records = getattr(node, "workeroutput", {}).get(RECORDS_KEY)
    if records:
        _session(node.config).add_records(json.loads(records))
