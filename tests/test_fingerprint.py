"""The environment fingerprint: read where readable (nvidia-smi's answer parsed from canned text: no GPU here),
kept in every record and in the history, and named by the history gate when the two runs' differ."""

from __future__ import annotations

import json
from pathlib import Path

from test_asv_history import INFO, MACHINE, make_record, private_temp_dir, repo, results_dir, write  # noqa: F401
from test_regression import Repo, compare

from pytest_decodeperf import fingerprint
from pytest_decodeperf.engine.device.machine import cpu_governor, machine_info, parse_gpu_query
from pytest_decodeperf.history.render import render_table
from pytest_decodeperf.records import MachineInfo

# nvidia-smi --query-gpu=uuid,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,
#   clocks.applications.graphics,clocks.applications.memory --format=csv,noheader,nounits (two GPUs, one idle)
TWO_GPUS = """\
GPU-3b6e5d5b-1111-2222-3333-444455556666, 550.54.15, 345, 1593, 1980, 2619, 1755, 2619
GPU-9f0c7a12-aaaa-bbbb-cccc-ddddeeeeffff, 550.54.15, 1980, 2619, 1980, 2619, [N/A], [N/A]
"""


def test_nvidia_smis_answer_gives_the_driver_and_the_clocks_of_torchs_gpu() -> None:
    clocks = {"sm": 1980, "mem": 2619, "max_sm": 1980, "max_mem": 2619}  # no application clocks readable
    assert parse_gpu_query(TWO_GPUS, "9f0c7a12-aaaa-bbbb-cccc-ddddeeeeffff") == ("550.54.15", clocks)
    first = {"sm": 345, "mem": 1593, "max_sm": 1980, "max_mem": 2619, "app_sm": 1755, "app_mem": 2619}
    assert parse_gpu_query(TWO_GPUS.splitlines()[0], None) == ("550.54.15", first)  # one GPU: its row
    assert parse_gpu_query(TWO_GPUS, "not-this-machines") == ("550.54.15", None)  # which GPU is unknown: no clocks
    assert parse_gpu_query("", None) == (None, None)
    assert parse_gpu_query("NVIDIA-SMI has failed because it couldn't communicate with the driver.", None) == (
        None,
        None,
    )
    assert fingerprint.clocks(first) == "app sm 1755 mem 2619, max sm 1980 mem 2619 (MHz)"  # not the current ones


def test_the_governor_where_the_kernel_says_and_the_cpu_machine_info(tmp_path: Path) -> None:
    path = tmp_path / "scaling_governor"
    path.write_text("performance\n")
    assert cpu_governor(str(path)) == "performance"
    assert cpu_governor(str(tmp_path / "absent")) is None
    info = machine_info("cpu", threads=1)
    assert info["gpu_clocks_mhz"] is None and "cpu_governor" in info
    print_ = fingerprint.of(info)
    assert print_["threads"] == "1" and {"torch", "transformers", "cpu", "python"} <= set(print_)
    assert "gpu_clocks" not in print_ and "cuda" not in print_  # nothing read, nothing claimed (a CPU build)


def test_differences_skip_the_packages_under_test_and_what_a_side_did_not_record() -> None:
    old = {"torch": "2.4.0", "gpu_driver": "550.54", "threads": "1"}
    new = {"torch": "2.5.1", "gpu_driver": "560.35", "threads": "1", "cpu_governor": "performance"}
    assert fingerprint.differences(old, new) == ["torch 2.4.0 -> 2.5.1", "gpu_driver 550.54 -> 560.35"]
    assert fingerprint.differences(old, new, under_test={"torch"}) == ["gpu_driver 550.54 -> 560.35"]
    assert fingerprint.describe([]) is None
    line = fingerprint.describe(["gpu_driver 550.54 -> 560.35"], "side A", "side B")
    assert line is not None and "(side A -> side B): gpu_driver 550.54 -> 560.35" in line
    assert "a machine change is not a regression" in line


def test_the_history_keeps_the_fingerprint_and_the_gate_names_a_changed_one(repo: Repo) -> None:
    governed = MachineInfo(**{**INFO, "cpu_governor": "powersave", "threads": 1})
    before = make_record(ms=2.0, seed=1)
    [path] = write(repo, 0, [before])
    requirements = json.loads(path.read_text())["requirements"]
    assert requirements == fingerprint.of(INFO)
    now = make_record(ms=2.0, seed=1)
    now["fingerprint"] = fingerprint.of(governed) | {"torch": "2.14.0"}
    cmp = compare(repo, 1, [now])
    assert cmp.environment == ["torch 2.13.0 -> 2.14.0"]  # the governor and threads: the old run did not say
    assert f"({repo[1][0][:8]} -> this run): torch 2.13.0 -> 2.14.0" in render_table(cmp)
    machine = json.loads((results_dir(repo) / MACHINE / "machine.json").read_text())  # the latest run's
    assert (machine["torch"], machine["python"], machine["device"]) == ("2.13.0", "3.11.9", "cpu")
    del now["fingerprint"]
    assert compare(repo, 1, [now]).environment == []  # an older record says nothing: nothing differs
