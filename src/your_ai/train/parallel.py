"""Data-parallel training: the process group, the parallel strategy, sharded loading.

A run started by ``torchrun`` (or ``accelerate launch``, which sets the same variables) has
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in its environment. ``start`` then joins the process
group (NCCL on CUDA, one GPU per process picked by ``LOCAL_RANK``; gloo on the CPU) and the
training loop runs the same steps on every rank:

* every rank draws the same global batches (``--batch-size`` x world size samples) from the same
  seeded order and trains on its own contiguous slice of each (``Strategy.rank_slice``);
* gradients are averaged over ranks; each rank's loss is scaled by its share of the global batch
  (``Strategy.loss_scale``), so the update equals the one-process update on the whole global batch, also
  when an epoch's last batch does not divide evenly;
* ``--strategy ddp`` (and ``auto``) keeps a whole copy of the model on every rank under
  ``DistributedDataParallel``; ``--strategy fsdp`` shards the frozen base weights and the LoRA
  parameters over the ranks with PyTorch's ``fully_shard`` (each decoder layer, then the root),
  and checkpoints hold full tensors gathered to rank 0 (``Strategy.full_states``), so any strategy and any
  number of processes resumes them;
* rank 0 alone prints, logs and writes files; decisions that stop the run use values that every
  rank agrees on (``Strategy.all_max``, ``Strategy.all_sum``).

``Strategy`` gathers what differs between one process, ``ddp`` and ``fsdp`` for the training loop;
``your_ai.train.launch`` starts the processes (``your-ai train --gpus N``).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from your_ai.environment import env_number
from your_ai.lifeline import end_with_parent, launched_by_agent
from your_ai.model.load import weight_files
from your_ai.model.lora import reset_adapters, start_magnitudes
from your_ai.model.meta import decoder_layers
from your_ai.model.quantize import is_quantized
from your_ai.train.args import check_strategy


class DistributedError(Exception):
    """Data-parallel training cannot start here; the message says why and what to do."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` as torchrun sets them (none set: one process)."""
    size = env_number("WORLD_SIZE", 1, whole=True, error=DistributedError)
    rank = env_number("RANK", 0, whole=True, error=DistributedError)
    local_rank = env_number("LOCAL_RANK", rank, whole=True, error=DistributedError)
    if size < 1 or rank >= size:
        raise DistributedError(f"RANK={rank} does not fit WORLD_SIZE={size}")
    return World(rank=rank, size=size, local_rank=local_rank)


def start(device: str) -> tuple[World, str]:
    """Join the process group when this process is one of several; returns (world, this rank's device).

    One process: ``World()`` and ``device`` unchanged. Several: CUDA ranks use ``cuda:<LOCAL_RANK>``
    and NCCL; CPU ranks use gloo. Apple's MPS backend cannot be used by several processes.
    """
    world = world_from_env()
    if not world.distributed:
        return world, device
    if launched_by_agent():  # the launcher killed: this process ends too, instead of waiting for its peers forever
        end_with_parent()
    kind = device.split(":")[0]
    if kind == "mps":
        raise DistributedError("data-parallel training runs on CUDA GPUs or on the CPU (--device cpu), not on MPS")
    if kind == "cuda":
        count = torch.cuda.device_count()
        if world.local_rank >= count:
            raise DistributedError(f"LOCAL_RANK={world.local_rank} but PyTorch sees {count} CUDA GPU(s) here; "
                                   f"start at most {count} processes per machine")
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(world.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    return World(world.rank, world.size, world.local_rank, backend), device


def all_max(value: float, world: World, device: str) -> float:
    """The largest ``value`` over ranks: every rank takes the same decision from it."""
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def wrap(module: torch.nn.Module, world: World, device: str) -> torch.nn.Module:
    """``module`` under ``DistributedDataParallel`` (gradients of its trainable parameters averaged
    over ranks in the backward pass); one process: ``module`` itself.

    Frozen 4-bit (NF4) weights are left out of DDP's start-up broadcast, which would flatten the
    quantized tensors: every rank builds them identically from the same weights and seed."""
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    quantized = [name for name, parameter in module.named_parameters() if is_quantized(parameter)]
    if quantized:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, quantized)
    device_ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=False)


def shard(module: torch.nn.Module, world: World, device: str) -> torch.nn.Module:
    """Shard ``module``'s parameters over the ranks (FSDP2 ``fully_shard``): each decoder layer is
    gathered for its forward and backward passes only, the rest (embeddings, final norm, head) for
    the forward and backward passes of ``module`` itself; gradients are reduce-scattered, averaged
    over ranks. Call before the optimizer is built (its parameters become sharded tensors)."""
    if not world.distributed:
        return module
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    layers = decoder_layers(module)
    if not layers:
        raise DistributedError(f"--strategy fsdp: found no decoder layers to shard in {type(module).__name__}; "
                               f"use --strategy ddp")
    mesh = init_device_mesh(device.split(":")[0], (world.size,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def pick_strategy(strategy: str | None, fits_one_device: bool) -> str:
    """The fit test's strategy on several processes (``benchmark``/``optimize --gpus``): ``ddp`` or ``fsdp``
    as asked; ``auto``: ``ddp`` when the model fits one device (each process holds it whole), else ``fsdp``."""
    chosen = check_strategy(strategy)
    if (strategy or "auto") == "auto" and not fits_one_device:
        return "fsdp"
    return chosen


# ---------------------------------------------------------------------------- sharded loading
#
# A model larger than one GPU cannot be loaded whole and sharded afterwards. Instead every rank builds
# the model with its parameters on the meta device (no memory), shards it, allocates its own shards
# (``materialize``) and reads only those from the safetensors files (``load_hf_weights``).

def materialize(module: torch.nn.Module, device: str, std: float = 0.02) -> None:
    """Allocate a sharded ``module``'s parameters (built under ``parameters_on_meta``) on ``device``, each
    rank its own shards, with random values: normal(0, ``std``), norm weights 1, other vectors 0.
    Buffers keep their values."""
    buffers = {name: buffer.detach().clone() for name, buffer in module.named_buffers()}
    ties = _tied_parameters(module)
    module.to_empty(device=device)
    for (owner, key), (user, user_key) in ties:  # allocation made a tensor of each: tie them again
        user._parameters[user_key] = owner._parameters[key]
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            buffer.copy_(buffers[name])
        for name, parameter in module.named_parameters():
            local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
            if local.dim() == 1 and "norm" not in name:
                local.zero_()
            elif local.dim() == 1:
                local.fill_(1.0)
            else:
                local.normal_(0.0, std)


def _tied_parameters(module: torch.nn.Module) -> list[tuple[tuple, tuple]]:
    """((first module, name), (other module, name)) for each further place a parameter is registered
    (tied weights: a head sharing the input embeddings)."""
    first: dict[int, tuple] = {}
    ties = []
    for inner in module.modules(remove_duplicate=False):
        for key, parameter in inner._parameters.items():
            if parameter is None:
                continue
            place = first.setdefault(id(parameter), (inner, key))
            if place != (inner, key):
                ties.append((place, (inner, key)))
    return ties


def shard_and_load(module: torch.nn.Module, world: World, device: str, weights_dir=None, seed: int = 0) -> int:
    """Shard ``module`` (holding a PEFT model) over the ranks. Built under ``parameters_on_meta``, this rank's
    shards are then allocated and filled: the base weights read from the safetensors files in ``weights_dir``
    (each rank reads its shards only; ``None``: random, ``materialize``), the LoRA adapters started by
    ``lora.reset_adapters(..., seed)`` as one process starts them, then DoRA's magnitudes from the base weights
    read (``lora.start_magnitudes``). Returns the number of tensors read."""
    on_meta = any(parameter.is_meta for parameter in module.parameters())
    shard(module, world, device)
    if not on_meta:  # loaded whole on each rank (4-bit weights): sharding frees the other ranks' parts
        return 0
    materialize(module, device)
    reset_adapters(module, seed)
    read = load_hf_weights(module, weights_dir) if weights_dir is not None else 0
    start_magnitudes(module)
    return read


def checkpoint_name(parameter_name: str) -> str:
    """The name a (PEFT-wrapped) parameter has in its Hugging Face checkpoint:
    ``model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight`` -> ``model.layers.0.self_attn.q_proj.weight``."""
    return parameter_name.split("base_model.model.", 1)[-1].replace(".base_layer.", ".")


def load_hf_weights(module: torch.nn.Module, directory) -> int:
    """Read a Hugging Face safetensors checkpoint in ``directory`` into ``module``'s (sharded) parameters:
    each rank reads only its shards (``torch.distributed.checkpoint``'s Hugging Face reader). LoRA
    parameters are not in the checkpoint and keep their values. Returns the number of tensors read;
    a base parameter missing from the checkpoint is an error that names it."""
    import torch.distributed.checkpoint as dcp
    from safetensors import safe_open

    stored: set[str] = set()
    for file in weight_files(directory):
        with safe_open(str(file), framework="pt") as handle:
            stored.update(handle.keys())
    wanted = {}
    for name, parameter in module.named_parameters():
        key = checkpoint_name(name)
        if key in stored:
            wanted[key] = parameter
        elif "lora_" not in name:
            raise DistributedError(f"sharded loading: parameter {name!r} ({key!r}) is not in the safetensors files "
                                   f"of {directory}; use --strategy ddp")
    dcp.load(wanted, storage_reader=dcp.HuggingFaceStorageReader(str(directory)))
    return len(wanted)


@contextmanager
def _gradient_sync_off(module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def no_sync(module: torch.nn.Module, sync: bool):
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) of this backward pass (a
    micro-batch that is not the step's last)."""
    if sync:
        return nullcontext()
    if hasattr(module, "set_requires_gradient_sync"):
        return _gradient_sync_off(module)
    if hasattr(module, "no_sync"):
        return module.no_sync()
    return nullcontext()


def local_float(value) -> float:
    """A scalar tensor as a float; a replicated sharded-tensor value (a gradient norm) as its full value."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)


def _parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters in the order ``optimizer.state_dict()`` numbers them."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]


# ---------------------------------------------------------------------------- the strategy

@dataclass(frozen=True)
class Strategy:
    """How the training processes share a run: one process, ``ddp`` (a whole model on every process under
    ``DistributedDataParallel``) or ``fsdp`` (``sharded``: the weights sharded over the processes).

    It owns what differs between them: loading and wrapping the model, this process's share of a
    batch, the values every process agrees on, the full states gathered for saving, and which process
    writes (``is_writer``)."""

    world: World = World()
    device: str = "cpu"
    sharded: bool = False

    @property
    def name(self) -> str:
        return "fsdp" if self.sharded else "ddp" if self.world.distributed else "single"

    @property
    def distributed(self) -> bool:
        return self.world.distributed

    @property
    def is_writer(self) -> bool:
        """The one process that prints, logs and writes files."""
        return self.world.main

    @property
    def evaluates(self) -> bool:
        """Whether this process runs validation: the writer; sharded, every process (layers are gathered together)."""
        return self.is_writer or self.sharded

    def load(self, module: torch.nn.Module, weights_dir, seed: int) -> int:
        """Sharded: shard ``module`` and read this process's shards (``shard_and_load``); returns the tensors read."""
        return shard_and_load(module, self.world, self.device, weights_dir, seed) if self.sharded else 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` as the step runs it: under DDP with a whole model on several processes, else as it is."""
        return module if self.sharded else wrap(module, self.world, self.device)

    def rank_slice(self, indices: list[int], batch_size: int) -> list[int]:
        """This process's samples of a global batch: the contiguous slice ``[rank * batch_size, (rank + 1) *
        batch_size)``. A short global batch (an epoch's last) leaves later processes fewer samples or none."""
        return indices[self.world.rank * batch_size : (self.world.rank + 1) * batch_size]

    def loss_scale(self, mine: int, total: int) -> float:
        """Factor on this process's mean loss so that the average over processes (what DDP does to gradients)
        is the mean loss over the whole global batch of ``total`` samples (``mine`` of them here)."""
        return mine * self.world.size / total if self.world.distributed else 1.0

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes (float64)."""
        if not self.world.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def all_max(self, value: float) -> float:
        """The largest ``value`` over processes: every process takes the same decision from it."""
        return all_max(value, self.world, self.device)

    def check_same(self, values: dict) -> dict | None:
        """``None`` when every process holds the same ``values``; else the first differing rank's values."""
        if not self.world.distributed:
            return None
        gathered: list = [None] * self.world.size
        dist.all_gather_object(gathered, values)
        return next(({"rank": rank, **other} for rank, other in enumerate(gathered) if other != values), None)

    def barrier(self) -> None:
        if self.world.distributed:
            dist.barrier()

    @contextmanager
    def local_main_first(self):
        """The block runs in this machine's first process before the others, which then find what it cached
        (the data's scores and tokens) instead of computing it at the same time."""
        first = self.world.local_rank == 0
        if not first:
            self.barrier()
        yield
        if first:
            self.barrier()

    def stop(self) -> None:
        """Leave the process group (after the last collective)."""
        if self.world.distributed and dist.is_initialized():
            dist.destroy_process_group()

    @contextmanager
    def gathered(self, module: torch.nn.Module):
        """Sharded: ``module``'s own parameters (not its layers') gathered whole while the block runs, so
        code that uses them outside ``module``'s forward pass (an evaluation) sees full tensors."""
        if not self.sharded:
            yield
            return
        module.unshard()
        try:
            yield
        finally:
            module.reshard()

    def full_states(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
                    ) -> tuple[dict | None, dict | None]:
        """Sharded: the full state dicts of ``model``'s trainable parameters (the frozen base weights are
        never gathered) and of ``optimizer`` (keyed by parameter number, as ``optimizer.state_dict()`` has
        it), on the writer's CPU (empty dicts elsewhere); every process must call it. Else ``(None, None)``:
        the model and optimizer hold their own full states."""
        if not self.sharded:
            return None, None
        from torch.distributed.checkpoint.state_dict import (  # sharded runs only: a slow import
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        model_state = get_model_state_dict(model, options=options)
        if optimizer is None:
            return model_state, {}
        by_name = get_optimizer_state_dict(model, optimizer, options=options)
        if not self.is_writer:
            return {}, {}
        number = {name: index for index, name in enumerate(_parameter_names(model, optimizer))}
        groups = [{**group, "params": [number[name] for name in group["params"]]} for group in by_name["param_groups"]]
        state = {number[name]: values for name, values in by_name["state"].items()}
        return model_state, {"state": state, "param_groups": groups}

    def optimizer_state_loader(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """What loads a full optimizer state dict (keyed by parameter number) into ``optimizer``: sharded,
        each process keeps its shard; else ``optimizer.load_state_dict``."""
        if not self.sharded:
            return optimizer.load_state_dict

        def load(state_dict: dict) -> None:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            names = _parameter_names(model, optimizer)
            saved = sum(len(group["params"]) for group in state_dict["param_groups"])
            if len(names) != saved:
                raise ValueError(f"the saved optimizer state holds {saved} parameters; this model trains {len(names)}")
            by_name = {
                "state": {names[number]: values for number, values in state_dict["state"].items()},
                "param_groups": [{**group, "params": [names[number] for number in group["params"]]}
                                 for group in state_dict["param_groups"]],
            }
            set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))

        return load
