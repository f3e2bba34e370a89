"""Chapter 07: data parallelism and tensor parallelism with ``torch.distributed``.

* Data parallelism (数据并行): every rank holds the whole model, runs its own slice of the
  batch, and the gradients are **all-reduced** (summed over ranks) and divided by the world
  size. With equal slices this is exactly the gradient of the full batch's mean loss.
* Gradient accumulation (梯度累积): the same sum over micro-batches, in one process, in time
  instead of space: each micro-batch's mean loss is weighted by its share of the batch.
* Tensor parallelism (张量并行, Megatron-LM): a linear layer ``y = x W^T + b`` split by
  output features (column-parallel: each rank owns rows of W, outputs are concatenated,
  i.e. all-gathered) or by input features (row-parallel: each rank owns columns of W and
  the matching slice of x; the partial products are all-reduced and the bias added once).

The functions that talk to other ranks take the collective as an argument
(``all_reduce=dist.all_reduce``), so one process can check them with :class:`SimulatedGroup`
(ranks as threads) and the same code runs in real processes. This module runs unchanged
under ``torchrun`` on one or several machines::

    torchrun --nproc_per_node=2 -m llmcourse.reference.parallel
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=2 -m llmcourse.reference.parallel

and :func:`run_local` starts the same check in ``world_size`` local processes
(``torch.multiprocessing``, gloo backend, a file store).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------
# Data parallelism

def average_gradients(model: nn.Module, world_size: int, all_reduce=None) -> None:
    """In place: every parameter's ``.grad`` becomes the mean of that gradient over ranks.
    ``all_reduce(t)`` sums ``t`` over ranks in place (``dist.all_reduce`` by default)."""
    all_reduce = all_reduce or dist.all_reduce
    for p in model.parameters():
        if p.grad is not None:
            all_reduce(p.grad)
            p.grad.div_(world_size)


def accumulate_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         micro_batch_size: int) -> None:
    """Leave in ``.grad`` the gradient of the FULL batch's mean cross-entropy
    ``F.cross_entropy(model(x), y)``, computed micro-batch by micro-batch.

    Old gradients are cleared first. Micro-batch i (size b_i, the last may be smaller)
    contributes ``mean_loss_i * b_i / B``, so the sum is the full batch's mean."""
    for p in model.parameters():
        p.grad = None
    B = len(x)
    for i in range(0, B, micro_batch_size):
        xb, yb = x[i:i + micro_batch_size], y[i:i + micro_batch_size]
        (F.cross_entropy(model(xb), yb) * (len(xb) / B)).backward()


class SimulatedGroup:
    """``world_size`` ranks as threads of this process, with an ``all_reduce`` that sums in
    place as gloo's does. ``run(fn, per_rank_args)`` calls ``fn(*args)`` on every rank at
    once and returns the ranks' results; the first error raised on any rank is re-raised.
    A rank that returns while others wait in a collective breaks the group at once (no hang)."""

    def __init__(self, world_size: int, timeout: float = 30.0):
        self.world_size, self.timeout = world_size, timeout
        self._cond = threading.Condition()
        self._arrived, self._generation = 0, 0
        self._finished: set[int] = set()
        self._slots: list[torch.Tensor | None] = [None] * world_size
        self._local = threading.local()

    @property
    def rank(self) -> int:
        return self._local.rank

    def _sync(self) -> None:
        """Wait until every rank arrives here (a barrier that notices ranks that left)."""
        with self._cond:
            generation = self._generation
            self._arrived += 1
            if self._arrived == self.world_size:
                self._arrived, self._generation = 0, generation + 1
                self._cond.notify_all()
                return
            deadline = time.monotonic() + self.timeout
            while self._generation == generation:
                if self._finished:
                    raise GroupBroken("ranks did not call all_reduce the same number of times")
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise GroupBroken(f"all_reduce waited {self.timeout:g} s for the other ranks")

    def all_reduce(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM, group=None,
                   async_op: bool = False):
        if op != dist.ReduceOp.SUM:
            raise ValueError("this simulated group (like the course's use of gloo) only sums: "
                             "use the default op=ReduceOp.SUM")
        self._slots[self.rank] = tensor.detach().clone()
        self._sync()
        total = self._slots[0].clone()
        for t in self._slots[1:]:
            total += t
        self._sync()
        tensor.copy_(total)

    def run(self, fn, per_rank_args: list[tuple]) -> list:
        results, errors = [None] * self.world_size, [None] * self.world_size

        def target(rank):
            self._local.rank = rank
            try:
                results[rank] = fn(*per_rank_args[rank])
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors[rank] = exc
            finally:
                with self._cond:
                    self._finished.add(rank)
                    self._cond.notify_all()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        real = [e for e in errors if e is not None and not isinstance(e, GroupBroken)]
        if real:
            raise real[0]
        broken = [e for e in errors if e is not None]
        if broken:
            raise broken[0]
        return results


class GroupBroken(RuntimeError):
    """A simulated collective could not complete (ranks disagree on the calls they make)."""


# ---------------------------------------------------------------------------------------
# Tensor parallelism (a simulated list of shards, and the real collectives)

def shard_linear(weight: torch.Tensor, bias: torch.Tensor | None, world_size: int,
                 style: str) -> tuple[list[torch.Tensor], list[torch.Tensor] | torch.Tensor | None]:
    """Split an ``nn.Linear``'s weight (out, in) over ranks.

    ``"column"``: rows of W (output features) and the bias with them -> (W_i, b_i) lists.
    ``"row"``: columns of W (input features); the bias stays whole (added once)."""
    if style == "column":
        return list(weight.chunk(world_size, dim=0)), (None if bias is None else
                                                        list(bias.chunk(world_size, dim=0)))
    if style == "row":
        return list(weight.chunk(world_size, dim=1)), bias
    raise ValueError("style must be 'column' or 'row'")


def column_parallel_linear(x: torch.Tensor, weight_shards: list[torch.Tensor],
                           bias_shards: list[torch.Tensor]) -> torch.Tensor:
    """x (..., in); W_i (out_i, in); b_i (out_i,) -> (..., sum out_i): rank i computes
    x W_i^T + b_i, and the all-gather concatenates the pieces along the last axis."""
    return torch.cat([x @ w.T + b for w, b in zip(weight_shards, bias_shards)], dim=-1)


def row_parallel_linear(x_shards: list[torch.Tensor], weight_shards: list[torch.Tensor],
                        bias: torch.Tensor) -> torch.Tensor:
    """x_i (..., in_i); W_i (out, in_i); bias (out,) -> (..., out): rank i computes the
    partial product x_i W_i^T, the all-reduce sums them, and the bias is added once."""
    out = x_shards[0] @ weight_shards[0].T
    for x, w in zip(x_shards[1:], weight_shards[1:]):
        out = out + x @ w.T
    return out + bias


def column_parallel_forward(x, weight_shard, bias_shard, world_size: int) -> torch.Tensor:
    """This rank's column shard, then ``dist.all_gather`` -> the full output on every rank."""
    local = F.linear(x, weight_shard, bias_shard)
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local)
    return torch.cat(parts, dim=-1)


def row_parallel_forward(x_shard, weight_shard, bias, all_reduce=None) -> torch.Tensor:
    """This rank's row shard, then an all-reduce of the partial products, bias added once."""
    partial = F.linear(x_shard, weight_shard)
    (all_reduce or dist.all_reduce)(partial)
    return partial + bias


# ---------------------------------------------------------------------------------------
# The equivalence check, run by every rank (torchrun, run_local or the tests)

def _toy_model(seed: int) -> nn.Module:
    from .gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)).double()


def _lm_loss(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def equivalence_check(rank: int, world_size: int, seed: int = 0, all_reduce=None) -> dict:
    """Every rank: (1) data parallel - its slice of a batch, all-reduced gradients vs the
    full batch's gradients computed alone; (2) gradient accumulation vs the full batch;
    (3) a column- and a row-parallel linear layer vs the full product. Returns max abs errors."""
    all_reduce = all_reduce or dist.all_reduce
    g = torch.Generator().manual_seed(seed + 1)
    B = 4 * world_size
    data = torch.randint(0, 64, (B, 17), generator=g)
    x, y = data[:, :-1], data[:, 1:]
    full = _toy_model(seed)
    _lm_loss(full, x, y).backward()
    mine = _toy_model(seed)
    per = B // world_size
    _lm_loss(mine, x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]).backward()
    average_gradients(mine, world_size, all_reduce)
    dp = max((a.grad - b.grad).abs().max().item()
             for a, b in zip(mine.parameters(), full.parameters()))
    acc_model = _toy_model(seed)
    for p in acc_model.parameters():
        p.grad = None
    for i in range(0, B, 3):  # uneven micro-batches on purpose
        (_lm_loss(acc_model, x[i:i + 3], y[i:i + 3]) * (len(x[i:i + 3]) / B)).backward()
    acc = max((a.grad - b.grad).abs().max().item()
              for a, b in zip(acc_model.parameters(), full.parameters()))
    lin = nn.Linear(8 * world_size, 6 * world_size).double()
    torch.manual_seed(seed + 2)
    nn.init.normal_(lin.weight)
    nn.init.normal_(lin.bias)
    inp = torch.randn(3, 5, 8 * world_size, dtype=torch.float64, generator=g)
    with torch.no_grad():
        ref = lin(inp)
        w_col, b_col = shard_linear(lin.weight, lin.bias, world_size, "column")
        col = column_parallel_forward(inp, w_col[rank], b_col[rank], world_size)
        w_row, b = shard_linear(lin.weight, lin.bias, world_size, "row")
        row = row_parallel_forward(inp.chunk(world_size, dim=-1)[rank], w_row[rank], b, all_reduce)
    return {"rank": rank, "world_size": world_size, "data_parallel_max_err": dp,
            "accumulation_max_err": acc, "column_parallel_max_err": (col - ref).abs().max().item(),
            "row_parallel_max_err": (row - ref).abs().max().item()}


def init_gloo(rank: int, world_size: int, init_file: str, timeout_s: float = 20.0) -> None:
    """A gloo process group over a shared file store (one machine)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))


def _local_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    init_gloo(rank, world_size, init_file)
    try:
        result = equivalence_check(rank, world_size)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_local(world_size: int = 2) -> list[dict]:
    """Run :func:`equivalence_check` in ``world_size`` processes (spawned, gloo, loopback);
    returns every rank's result. Raises if gloo cannot start (no loopback interface)."""
    import torch.multiprocessing as mp

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_local_worker, args=(world_size, f"{tmp}/store", tmp),
                           nprocs=world_size, start_method="spawn")
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world_size)]


def main() -> int:
    """torchrun entry point: RANK, WORLD_SIZE, MASTER_ADDR/PORT come from the environment."""
    dist.init_process_group("gloo")
    try:
        result = equivalence_check(dist.get_rank(), dist.get_world_size())
        print(json.dumps(result), flush=True)
        worst = max(v for k, v in result.items() if k.endswith("_err"))
        return 0 if worst < 1e-10 else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
