"""pytest hooks: a thin layer over the engine (``engine/runner.py``), one plugin per concern.

This module wires the hooks; the fixtures are a plugin of their own (``fixtures.py``), and so are the A/B
(``ab/plugin.py``) and tensor parallel (``tp/plugin.py``), registered at configure when their options ask.
Collection lives in ``collection.py``, a run and its end in ``session.py``, and what a worker process reads from
the plugin in ``protocol.py``.

pytest imports this module in every session of every project where the package is installed, so
it imports neither torch nor transformers: the engine is imported when a ``decode_perf`` item is
collected or run, or when ``--decodeperf`` asks for a device.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import pytest

from . import fixtures, protocol
from .benchmark_support import benchmark_fed, feed_pytest_benchmark
from .collection import MARKER, check_model_names, narrowed_out, parametrize
from .errors import DecodePerfError
from .marker import MARKER_DOC
from .options import add_options, load_settings, source_of
from .plots import MISSING_MATPLOTLIB
from .protocol import MODEL_KEY, SESSION_KEY, item_param, model_of, session
from .session import DecodePerfSession, ItemOutcome
from .xdist_support import RECORDS_KEY, assign_gpu, check_worker_gpu, pin_worker_gpu

SKIP_REASON = "decode perf tests need --decodeperf"

# What a worker reads off this module (``protocol.py``): the protocol module itself (version 2 on), and the names
# a worker of an older commit reads (version 1).
_item_param = item_param
_session = session
__all__ = ["MODEL_KEY", "SESSION_KEY", "_item_param", "_session", "protocol"]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    if not config.pluginmanager.has_plugin("decodeperf-fixtures"):
        config.pluginmanager.register(fixtures, "decodeperf-fixtures")
    pin_worker_gpu(config)
    settings = load_settings(config)
    dp = DecodePerfSession(settings)
    if settings.enabled:
        _check_settings(config, dp)
        from .job_summary import configure as configure_markdown

        configure_markdown(config, dp)  # the Markdown report: --decodeperf-markdown, GITHUB_STEP_SUMMARY
        if settings.ab is not None or settings.ab_python is not None:
            from .ab.plugin import configure as configure_ab

            configure_ab(config, dp)
        from .tp.hooks import configure as configure_tp

        configure_tp(config, dp)  # a rank of torchrun/srun joins the process group here; tp/plugin.py's hooks
    config.stash[SESSION_KEY] = dp


def _check_settings(config: pytest.Config, dp: DecodePerfSession) -> None:
    """What can be refused before collection, each in one line naming where the value came from."""
    settings = dp.settings
    try:
        dp.device  # noqa: B018 - resolve now: --decodeperf-device=cuda without CUDA is a usage error
    except DecodePerfError as exc:
        raise pytest.UsageError(f"pytest-decodeperf: {exc} (from {source_of(config, 'device')})") from None
    if dp.device.type == "cuda":
        check_worker_gpu(config)
    if settings.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise pytest.UsageError(f"pytest-decodeperf: {MISSING_MATPLOTLIB}") from None
    if settings.asv is not None or settings.compare is not None:
        try:
            results_dir = dp.asv_results_dir()
            if settings.asv:  # an explicit PATH must be (or go) in an existing writable directory
                from .option_values import check_writable_dir

                check_writable_dir(results_dir)
        except DecodePerfError as exc:
            raise pytest.UsageError(f"pytest-decodeperf: {exc}") from None
    if settings.profile_steps is not None and dp.device.type != "cuda":
        raise pytest.UsageError(
            "pytest-decodeperf: --decodeperf-profile-steps needs CUDA (cudaProfilerApi); this run is on "
            f"{dp.device.type}"
        )


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    """With --decodeperf: the device, versions and threads every number of the run depends on."""
    dp = session(config)
    return [dp.header()] if dp.settings.enabled else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker(MARKER) is None:
        return
    fixturedefs = metafunc.definition.session._fixturemanager.getfixturedefs("decode_model", metafunc.definition) or ()
    custom_model = bool(fixturedefs) and fixturedefs[-1].func is not fixtures.decode_model.__wrapped__  # type: ignore[attr-defined]
    parametrize(metafunc, session(metafunc.config), custom_model)


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's, which skips items not using its fixture
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    dp = session(config)
    settings = dp.settings
    feeds_benchmark = benchmark_fed(config, settings.benchmark_table) and not dp.delegated and dp.reporter
    check_model_names(config, settings, items)
    keep: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        param = item_param(item)
        if param is not None and narrowed_out(param[0], settings):
            deselected.append(item)
            continue
        if item.get_closest_marker(MARKER) is not None and not settings.enabled:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
        names = getattr(item, "fixturenames", None)
        if feeds_benchmark and param is not None and isinstance(names, list) and "benchmark" not in names:
            names.append("benchmark")  # its rounds feed pytest-benchmark: it is a benchmark
        keep.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = keep


def _run_item(item: pytest.Item) -> ItemOutcome | None:
    """Measure the item's variant on the model its fixtures set up (the call phase, before the body)."""
    param = item_param(item)
    model = model_of(item)
    if param is None or model is None:
        return None
    dp = session(item.config)
    marker = item.get_closest_marker(MARKER)
    budget = marker.kwargs.get("max_syncs_per_step") if marker is not None else None
    outcome = ItemOutcome(*param, max_syncs_per_step=budget)
    dp.run_item(item.nodeid, outcome, model)
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    if outcome.result is not None:
        if "decode_result" in funcargs:
            funcargs["decode_result"] = outcome.result
        feed_pytest_benchmark(item, dp.records[-1])
    return outcome


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    outcome = _run_item(item)
    if outcome is not None and outcome.error is not None:
        pytest.fail(outcome.error, pytrace=False)
    result = yield
    measured = outcome.result if outcome is not None else None
    if measured is not None and measured.parity is not None and not measured.parity.ok:
        pytest.fail(str(measured.parity), pytrace=False)
    if measured is not None and measured.syncs is not None and measured.syncs.over_budget:
        pytest.fail(measured.syncs.message(measured.variant.id), pytrace=False)
    return result


@pytest.hookimpl(tryfirst=True)  # the table before pytest-benchmark's (the A/B's plugin, registered later, first)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session(config).display(terminalreporter)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[SESSION_KEY].finish(session)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    settings = session(node.config).settings
    if settings.enabled:
        assign_gpu(node, settings.share_gpu, settings.device in ("auto", "cuda"), max(settings.tp or (1,)))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    records = getattr(node, "workeroutput", {}).get(RECORDS_KEY)
    if records:
        session(node.config).add_records(json.loads(records))
