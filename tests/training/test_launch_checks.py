"""The launch checks of :mod:`vift_plugin.training.distributed` and the per-role rate logs under
optimizer wrappers, without launching anything (the launches are in ``test_launchers.py``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from vift_plugin.training.distributed import (
    check_world_size,
    cpu_launch_warning,
    fsdp_off_warning,
    is_single_process,
    launched_world_size,
    single_process_backend,
)
from vift_plugin.training.roles import logged_learning_rates, track_step_learning_rates

ACCELERATE_CPU_TWO = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
TORCHRUN_RANK = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}


def test_world_size_from_any_launcher() -> None:
    assert launched_world_size({}) == 1
    assert launched_world_size(TORCHRUN_RANK) == 2
    assert launched_world_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4  # mpirun
    assert launched_world_size({"WORLD_SIZE": ""}) == 1
    assert is_single_process({}) and is_single_process(ACCELERATE_CPU_TWO)
    assert not is_single_process(TORCHRUN_RANK)
    assert not is_single_process({"LOCAL_RANK": "0", "WORLD_SIZE": "1"})  # torchrun --nproc_per_node 1


def test_backend_dropped_only_in_a_single_process() -> None:
    assert single_process_backend("gloo", {}) is None  # accelerate 1.15 would crash on it
    assert single_process_backend("nccl", ACCELERATE_CPU_TWO) is None
    assert single_process_backend("gloo", TORCHRUN_RANK) == "gloo"
    assert single_process_backend(None, {}) is None


def test_accelerate_cpu_launch_of_one_process_is_warned_about() -> None:
    message = cpu_launch_warning(ACCELERATE_CPU_TWO)
    assert message is not None and "starts only one" in message and "--multi_gpu" in message
    assert cpu_launch_warning({**ACCELERATE_CPU_TWO, "ACCELERATE_USE_CPU": "False"}) is None
    assert cpu_launch_warning({"ACCELERATE_USE_CPU": "True"}) is None  # --num_processes 1: no MASTER_ADDR
    assert cpu_launch_warning({**ACCELERATE_CPU_TWO, "PMI_SIZE": "2", "LOCAL_RANK": "0"}) is None  # mpirun


def test_world_size_mismatch_is_an_error() -> None:
    check_world_size(2, True, "MULTI_CPU", TORCHRUN_RANK)
    check_world_size(1, False, "NO", {})
    with pytest.raises(ValueError, match="started 2 processes, but accelerate sees a world of 1.*set use_cpu"):
        check_world_size(1, False, "NO", TORCHRUN_RANK)
    with pytest.raises(ValueError, match="no gradient would be averaged"):
        check_world_size(2, False, "NO", TORCHRUN_RANK)


def test_fsdp_requested_but_not_applied_is_warned_about() -> None:
    args = SimpleNamespace(fsdp=[], use_cpu=True)
    assert fsdp_off_warning(args, False, {}) is None
    message = fsdp_off_warning(args, False, {"ACCELERATE_USE_FSDP": "true"})
    assert message is not None and "does not shard with use_cpu" in message
    assert fsdp_off_warning(args, True, {"ACCELERATE_USE_FSDP": "true"}) is None
    assert fsdp_off_warning(SimpleNamespace(fsdp=["full_shard"], use_cpu=False), False, {}) is not None


class Wrapper:
    """Stands for AcceleratedOptimizer / DeepSpeedOptimizerWrapper / a ZeRO optimizer: ``.optimizer``
    inside, the inner param_groups shown."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    @property
    def param_groups(self) -> Any:
        return self.optimizer.param_groups


def optimizer_with_roles() -> torch.optim.Optimizer:
    groups = [
        {"params": [torch.nn.Parameter(torch.ones(2))], "lr": 1.0, "role": "vision"},
        {"params": [torch.nn.Parameter(torch.ones(2))], "lr": 2.0, "role": "language"},
    ]
    optimizer = torch.optim.SGD(groups)
    track_step_learning_rates(optimizer)
    return optimizer


def test_step_rates_found_under_nested_wrappers() -> None:
    """DeepSpeed wraps the optimizer three deep; the rates of the step taken are still found."""
    optimizer = optimizer_with_roles()
    optimizer.step()
    for group in optimizer.param_groups:  # the scheduler moves on after the step
        group["lr"] /= 2
    taken = {"learning_rate/vision": 1.0, "learning_rate/language": 2.0}
    assert logged_learning_rates(Wrapper(Wrapper(Wrapper(optimizer))), 1.0) == taken


def test_step_rates_merged_when_groups_step_one_at_a_time() -> None:
    """ZeRO-1/2 step the inner optimizer once per group, showing it only that group."""
    optimizer = optimizer_with_roles()
    groups = optimizer.param_groups
    for group in list(groups):
        optimizer.param_groups = [group]
        optimizer.step()
    optimizer.param_groups = groups
    assert logged_learning_rates(Wrapper(optimizer), 1.0) == {
        "learning_rate/vision": 1.0,
        "learning_rate/language": 2.0,
    }


def test_fsdp2_config_reads_as_accelerate_fsdp2() -> None:
    """``examples/accelerate/fsdp2.yaml`` as ``accelerate launch --config_file`` reads it (the slow
    ``test_sharded.py`` trains under it)."""
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    path = Path(__file__).resolve().parents[2] / "examples" / "accelerate" / "fsdp2.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type == DistributedType.FSDP and not config.use_cpu
    assert config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in config.fsdp_config  # the model's _no_split_modules
    assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # saves land whole
