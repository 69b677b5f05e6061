"""The accelerate configs: accelerate's own launcher accepts each one, builds its plugin from it, and the DeepSpeed
ones become a config that the installed DeepSpeed accepts once the trainer fills its "auto" values."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest
import torch

from srt_trainer.training import SRTSFTConfig, gradient_accumulation_for
from tests.serving import free_port

CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"
EXPECTED = {
    "multi_gpu": ("MULTI_GPU", None),
    "deepspeed_zero2": ("DEEPSPEED", (2, "none", "none")),
    "deepspeed_zero3": ("DEEPSPEED", (3, "none", "none")),
    "deepspeed_zero3_offload": ("DEEPSPEED", (3, "cpu", "cpu")),
    "deepspeed_zero3_multinode": ("DEEPSPEED", (3, "none", "none")),
    "fsdp": ("FSDP", None),
}


def launch_env(name: str) -> tuple[object, dict[str, str]]:
    """What ``accelerate launch --config_file <name>.yaml`` validates and hands to the training processes.

    On a free port: accelerate checks that the main process's port is free, and refuses the multi-machine config's
    (29500, accelerate's default) whenever another launch on this machine holds it."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    argv = ["--config_file", str(CONFIGS / f"{name}.yaml"), "--main_process_port", str(free_port())]
    args = launch_command_parser().parse_args([*argv, "recipes/sft_7b.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before its DeepSpeed launcher
        fields = [*defaults.deepspeed_config.keys(), *(["mixed_precision"] if mp_from_config else [])]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


@pytest.fixture
def no_global_deepspeed_state():
    """DeepSpeed plugins register a process-wide HF DeepSpeed config; drop it so later tests load models plainly."""
    yield
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def test_every_config_is_there():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_accelerate_loads_and_validates(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    kind, _ = EXPECTED[name]
    machines = 2 if name.endswith("multinode") else 1
    processes = 8 * machines  # 8 GPUs a machine
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
    assert (config.num_processes, config.num_machines) == (processes, machines)
    args, env = launch_env(name)
    assert args.num_processes == processes and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert args.use_deepspeed == (kind == "DEEPSPEED") and args.use_fsdp == (kind == "FSDP")
    # the paper's global batch of 128 splits evenly over the processes at the usual per-device sizes
    sizes = (1, 2, 4, 8, 16)[: 6 - machines]
    assert [gradient_accumulation_for(128, b, processes) * b * processes for b in sizes] == [128] * len(sizes)


def test_scoring_shards_are_balanced_by_tokens_over_every_process_of_every_machine(alpaca_rows, embedded_tokenizer):
    from srt_trainer.scoring.runner import assign_shards, estimate_tokens

    # 247 real rows in shards of 4: 62 shards over 2 machines × 8 processes
    work = estimate_tokens(alpaca_rows, embedded_tokenizer)
    shards = [sum(work[i : i + 4]) for i in range(0, len(work), 4)]
    owned = assign_shards(shards, 16)
    assert sorted(k for ks in owned for k in ks) == list(range(len(shards)))  # every shard once
    loads = [sum(shards[k] for k in ks) for ks in owned]
    assert max(loads) - min(loads) <= max(shards)  # no process waits longer than one shard for the others


@pytest.mark.parametrize("name", [n for n, (kind, _) in EXPECTED.items() if kind == "DEEPSPEED"])
def test_deepspeed_config_is_valid_for_installed_deepspeed(name, tmp_path, no_global_deepspeed_state):
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    stage, offload_optimizer, offload_param = EXPECTED[name][1]
    # the recipe's arguments, created first as in a real run (global batch 128 → accumulation for this process)
    args = SRTSFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, bf16=True)
    _, env = launch_env(name)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()  # what accelerate builds from the launcher's environment
    plugin.set_mixed_precision("bf16")
    ds = plugin.deepspeed_config
    assert ds["zero_optimization"]["stage"] == stage and ds["train_batch_size"] == "auto"
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == offload_optimizer
    assert ds["zero_optimization"]["offload_param"]["device"] == offload_param
    assert plugin.zero3_init_flag == (stage == 3)
    if stage == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True

    hf = HfTrainerDeepSpeedConfig(ds)  # the trainer fills "auto" from the training arguments
    hf.trainer_config_process(args)
    assert not hf.mismatches
    filled = DeepSpeedConfig(hf.config)  # the installed DeepSpeed's own validation
    assert filled.zero_optimization_stage == stage and filled.bfloat16_config.enabled
    assert filled.train_batch_size == 128 == filled.train_micro_batch_size_per_gpu * filled.gradient_accumulation_steps
    for part, want in (("offload_optimizer", offload_optimizer), ("offload_param", offload_param)):
        device = getattr(filled.zero_config, part).device
        assert getattr(device, "value", device) == want


def test_fsdp_plugin_builds_from_the_config():
    from accelerate.utils import FullyShardedDataParallelPlugin

    _, env = launch_env("fsdp")
    assert env["FSDP_SYNC_MODULE_STATES"] == env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        # syncing module states (forced by RAM-efficient loading) needs a GPU to materialize parameters on;
        # everything else builds on CPU
        env = {**env, "FSDP_SYNC_MODULE_STATES": "false", "FSDP_CPU_RAM_EFFICIENT_LOADING": "false"}
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 1 and plugin.sharding_strategy.name == "FULL_SHARD"
    assert plugin.state_dict_type.name == "FULL_STATE_DICT" and plugin.use_orig_params
    assert plugin.backward_prefetch.name == "BACKWARD_PRE" and plugin.cpu_ram_efficient_loading == on_gpu
    assert plugin.auto_wrap_policy is not None  # transformer-block wrapping
