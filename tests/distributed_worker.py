"""One rank of tests/test_distributed.py, started by ``torchrun --nproc_per_node 2`` on CPU (gloo).

    distributed_worker.py MODE OUT [SPEC] [--set KEY=VALUE ...]

MODE: ``ddp`` | ``fsdp`` (FSDP2 ``fully_shard``) | ``cp`` (with_cp under DDP, checked against the
same run without it) | ``syncbn`` (what SyncBN does under gloo). Each rank trains on its own
seeded data; the checks that need every rank (parameters identical across ranks) run here, and
rank 0 writes ``OUT/result.pt`` (what the test compares with a single-process run) and
``OUT/checks.json``.
"""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import graphres

STEPS = 3
LR = 0.1
BATCH = 2
SIZE = 48
SEED = 0


def batch(rank: int, step: int) -> torch.Tensor:
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1000 * rank + step))


def loss_of(outs) -> torch.Tensor:
    outs = outs if isinstance(outs, tuple) else (outs,)
    return sum((o * o).mean() for o in outs)


def build(spec: str, overrides) -> nn.Module:
    torch.manual_seed(SEED)
    return graphres.build(spec, overrides)


def same_across_ranks(tensors) -> bool:
    """Whether every rank holds bitwise the same values (compared on rank 0, answered to all)."""
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    ok = torch.tensor([int(all(torch.equal(gathered[0], g) for g in gathered))])
    dist.broadcast(ok, 0)
    return bool(ok.item())


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def frozen_and_norm_checks(raw: nn.Module, before: dict, after: dict) -> dict:
    frozen = [f"{m}." for m in raw.frozen_modules]
    frozen_keys = [k for k in before if any(k.startswith(p) for p in frozen)]
    stat_keys = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    trainable = [n for n, p in raw.named_parameters() if p.requires_grad]
    return {
        "frozen_keys": len(frozen_keys),
        "frozen_unchanged": all(torch.equal(before[k], after[k]) for k in frozen_keys),
        "frozen_requires_grad": any(p.requires_grad for n, p in raw.named_parameters()
                                    if any(n.startswith(q) for q in frozen)),
        "stats": len(stat_keys),
        "stats_unchanged": all(torch.equal(before[k], after[k]) for k in stat_keys),
        "trained_changed": sum(not torch.equal(before[n], after[n]) for n in trainable),
        "trainable": len(trainable),
    }


def train_ddp(model: nn.Module, rank: int) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP
    ddp = DDP(model)
    opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=LR)
    ddp.train()
    for step in range(STEPS):
        opt.zero_grad()
        loss_of(ddp(batch(rank, step))).backward()
        opt.step()
    return ddp.module


def train_averaging_gradients(model: nn.Module, rank: int) -> nn.Module:
    """What DDP does, by hand: the gradients all-reduced and averaged after each backward (DDP itself
    refuses SyncBatchNorm layers in CPU modules)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    model.train()
    for step in range(STEPS):
        opt.zero_grad()
        loss_of(model(batch(rank, step))).backward()
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        opt.step()
    return model


def run_ddp(spec, overrides, rank, out: Path) -> dict:
    model = build(spec, overrides)
    before = snapshot(model)
    model = train_ddp(model, rank)
    after = snapshot(model)
    checks = frozen_and_norm_checks(model, before, after)
    checks["params_identical"] = same_across_ranks(list(model.state_dict().values()))
    model.eval()
    with torch.no_grad():
        outs = model(batch(99, 0))
    if rank == 0:
        torch.save({"outputs": list(outs), "state": after}, out / "result.pt")
    return checks


def run_fsdp(spec, overrides, rank, out: Path) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    model = build(spec, overrides)
    before = snapshot(model)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for name in model.stage_names:
        for block in getattr(model, name):
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = sum(isinstance(p, DTensor) for p in model.parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    model.train()
    for step in range(STEPS):
        opt.zero_grad()
        loss_of(model(batch(rank, step))).backward()
        opt.step()
    full = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
            for k, v in model.state_dict().items()}
    checks = frozen_and_norm_checks(model, before, full)
    checks["sharded_params"] = sharded
    checks["params_identical"] = same_across_ranks(list(full.values()))
    if rank == 0:
        torch.save({"state": full}, out / "result.pt")
    return checks


def run_cp(spec, overrides, rank, out: Path) -> dict:
    import torch.utils.checkpoint as cp
    calls = []
    original = cp.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    cp.checkpoint = counting
    grads = {}
    states = {}
    for with_cp in (True, False):
        model = build(spec, list(overrides) + [f"with_cp={'true' if with_cp else 'false'}"])
        from torch.nn.parallel import DistributedDataParallel as DDP
        ddp = DDP(model)
        ddp.train()
        loss_of(ddp(batch(rank, 0))).backward()
        grads[with_cp] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        states[with_cp] = snapshot(train_ddp(model, rank))
    cp.checkpoint = original
    return {
        "checkpoint_calls": len(calls),
        "use_reentrant": sorted(set(map(str, calls))),
        "grads": len(grads[True]),
        "grads_max_diff": max(float((grads[True][n] - grads[False][n]).abs().max()) for n in grads[False]),
        "same_grad_names": sorted(grads[True]) == sorted(grads[False]),
        "params_max_diff": max(float((states[True][k].double() - states[False][k].double()).abs().max())
                               for k in states[False]),
        "params_identical": same_across_ranks(list(states[True].values())),
    }


def run_syncbn(spec, overrides, rank, out: Path) -> dict:
    result = {}
    # torch's SyncBatchNorm, by conversion of a BN model
    model = build(spec, overrides)
    keys = list(model.state_dict())
    names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    result["bn_layers"] = len(names)
    result["converted"] = sorted(n for n, m in converted.named_modules() if isinstance(m, nn.SyncBatchNorm)) == \
        sorted(names)
    result["keys_kept"] = list(converted.state_dict()) == keys
    converted.eval()
    with torch.no_grad():
        outs = converted(batch(rank, 0))
    result["eval_shapes"] = [list(o.shape) for o in outs]
    converted.train()
    try:
        converted(batch(rank, 0))
        result["torch_train"] = "ran"
    except Exception as e:  # noqa: BLE001  (what torch does on CPU is what is recorded)
        result["torch_train"] = f"{type(e).__name__}: {e}"
    # graphres' SyncBatchNorm2d, from a spec with norm: {type: SyncBN}: DDP with synchronised statistics
    model = build(spec, list(overrides) + ["norm.type=SyncBN"])
    result["sync_layers"] = sum(type(m).__name__ == "SyncBatchNorm2d" for m in model.modules())
    from torch.nn.parallel import DistributedDataParallel as DDP
    try:
        DDP(model)
        result["ddp"] = "accepted"
    except ValueError as e:
        result["ddp"] = f"ValueError: {e}"
    model = train_averaging_gradients(model, rank)
    state = snapshot(model)
    stats = [v for k, v in state.items() if k.endswith(("running_mean", "running_var"))]
    result["stats_identical"] = same_across_ranks(stats)
    result["params_identical"] = same_across_ranks(list(state.values()))
    if rank == 0:
        torch.save({"state": state}, out / "result.pt")
    return result


def main() -> int:
    mode, out = sys.argv[1], Path(sys.argv[2])
    rest = sys.argv[3:]
    spec = rest[0] if rest and not rest[0].startswith("--") else "specs/resnet18.yaml"
    overrides = [rest[i + 1] for i, a in enumerate(rest) if a == "--set"]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    runs = {"ddp": run_ddp, "fsdp": run_fsdp, "cp": run_cp, "syncbn": run_syncbn}
    checks = runs[mode](spec, overrides, rank, out)
    checks["world_size"] = dist.get_world_size()
    (out / f"checks{rank}.json").write_text(json.dumps(checks, sort_keys=True))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
