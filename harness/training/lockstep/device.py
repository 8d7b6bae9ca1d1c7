"""Where the slots run and how many of them: train.device, a slot's memory, search.lockstep.

    resolve_device("auto")            cuda when torch sees a GPU, else cpu; "cuda" without one is an error
    slot_bytes(cfg, data)             the memory one slot of this model and task takes, measured
    choose_lockstep(setting, ...)     K for search.lockstep (an integer, or auto), checked against the memory

A slot's memory is its weights three times over (the weights, their gradients and the
Nesterov buffers) plus what autograd keeps of one training step for the backward pass,
measured on the longest training sequence at the largest hidden size the search may
draw (torch.autograd.graph.saved_tensors_hooks counts every saved tensor). `auto` on a
GPU takes as many slots as fit in 80% of its free memory (at most 256, and never more
than there are trials left); on a CPU it takes 1, because the native per-trial engine is
faster there than the batched path at any K (docs/engine.md, "Lockstep").
"""

from __future__ import annotations

import torch

from harness.errors import UserError
from harness.training import tasks
from harness.training.lockstep.stack import SlotModel, SlotStack

DEVICES = ("cpu", "cuda", "auto")
AUTO_MAX_SLOTS = 256
MEMORY_SHARE = 0.8  # of the free memory, for the slots together


def resolve_device(setting, key: str = "train.device") -> torch.device:
    """cpu, cuda (or cuda:N), or auto: one clear message for anything else or a missing GPU."""
    name = str(setting if setting is not None else "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(f"{key}={setting}: torch sees no CUDA device on this machine (torch "
                            f"{torch.__version__}); use {key}=cpu, or auto to take a GPU only where there is one.")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"{key}={setting}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                            f"choose cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
        return torch.device("cuda", index)
    raise UserError(f"{key}={setting} is unknown; choose one of {', '.join(DEVICES)} (or cuda:N).")


def free_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device` (the CPU: MemAvailable of /proc/meminfo)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30  # not Linux: assume 8 GiB


def slot_bytes(network, data) -> int:
    """Measured bytes of one slot of `network`'s model and size on `data` (module docstring)."""
    model = SlotModel(network)
    stack = SlotStack(model, [(model.weights_of(network), None, network.forward_layer.hidden_size)],
                      torch.device("cpu"))
    longest = max(data.train, key=lambda s: len(s.x))
    batch = tasks.make_batch([longest], data.task)
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        scores = stack.forward(batch.x.transpose(0, 1).unsqueeze(2), batch.lengths.unsqueeze(1))
        loss = tasks.sequence_losses(data.task, scores[:, :, 0].transpose(0, 1), batch).sum()
    weights = sum(leaf.numel() * leaf.element_size() for leaf in stack.leaves.values())
    del loss
    return 3 * weights + saved[0]


def check_lockstep_setting(setting, key: str = "search.lockstep"):
    """A positive integer, or "auto"; anything else is one line naming the key."""
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        return "auto"
    whole = isinstance(setting, int) or (isinstance(setting, str) and setting.strip().isdigit())
    if isinstance(setting, bool) or not whole:
        raise UserError(f"{key}={setting!r} is not a number of slots; use a positive integer (1: one trial at a "
                        "time) or auto.")
    if int(setting) < 1:
        raise UserError(f"{key}={setting} must be at least 1 (1: one trial at a time), or auto.")
    return int(setting)


def choose_lockstep(setting, device: torch.device, per_slot: int, trials_left: int,
                    key: str = "search.lockstep") -> int:
    """K slots: `setting` checked (a positive integer that fits in memory), or auto."""
    setting = check_lockstep_setting(setting, key)
    available = int(free_memory(device) * MEMORY_SHARE)
    fits = max(1, available // max(per_slot, 1))
    if setting == "auto":
        if device.type != "cuda":
            return 1
        return max(1, min(fits, AUTO_MAX_SLOTS, max(trials_left, 1)))
    if setting > 1 and setting * per_slot > available:
        raise UserError(f"{key}={setting} needs about {setting * per_slot / 2**30:.1f} GiB on {device} "
                        f"({per_slot / 2**20:.1f} MiB a slot) but {available / 2**30:.1f} GiB are free for it; "
                        f"choose at most {fits}, or auto.")
    return setting
