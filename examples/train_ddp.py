"""Train a graphres backbone with DistributedDataParallel, started by torchrun (docs/distributed.md).

One machine, two processes on the CPU (gloo) with synthetic data:

    torchrun --nproc_per_node 2 examples/train_ddp.py --spec resnet18 --steps 20

Two machines with 8 GPUs each (NCCL is picked when CUDA is available), run on each machine:

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        --rdzv-id myjob examples/train_ddp.py --spec resnet50 --sync-bn --batch-size 64

The backbone's last output feeds a global-average-pool + linear classifier; the data is a seeded
synthetic set of random images and labels (replace ``synthetic_data`` with a real Dataset). Rank 0
prints the loss of each logged step and, with ``--save``, writes the backbone's state dict, which
``graphres.build(spec, checkpoint=...)`` loads.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import graphres


class Classifier(nn.Module):
    """A backbone and a linear head on its last output."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_info.channels()[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.backbone(x)[-1]
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(last, 1), 1))


def synthetic_data(samples: int, size: int, num_classes: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(samples, 3, size, size, generator=g),
                         torch.randint(0, num_classes, (samples,), generator=g))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="resnet18", help="a spec file or a shipped spec's name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--size", type=int, default=64, help="image side")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--sync-bn", action="store_true", help="nn.SyncBatchNorm.convert_sync_batchnorm (GPUs only)")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--save", help="rank 0 writes the trained backbone's state dict here")
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = Classifier(graphres.build(args.spec, args.overrides), args.num_classes)
    if args.sync_bn:
        if not cuda:
            raise SystemExit("--sync-bn: torch's SyncBatchNorm trains on GPUs only (docs/distributed.md)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = DDP(model.to(device), device_ids=[local_rank] if cuda else None)
    params = [q for q in model.parameters() if q.requires_grad]  # frozen_stages' parameters are not
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9)

    data = synthetic_data(max(args.steps * args.batch_size * world, 64), args.size, args.num_classes)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    loss_fn = nn.CrossEntropyLoss()
    model.train()  # GraphresBackbone.train re-applies frozen_stages and norm_eval
    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.steps:
        sampler.set_epoch(epoch)
        for images, labels in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(images.to(device)), labels.to(device))
            loss.backward()
            opt.step()
            step += 1
            if rank == 0 and (step % args.log_every == 0 or step == args.steps):
                rate = step * args.batch_size * world / (time.perf_counter() - start)
                print(f"step {step}/{args.steps}  loss {loss.item():.4f}  {rate:.1f} img/s", flush=True)
            if step == args.steps:
                break
        epoch += 1
    if rank == 0 and args.save:
        torch.save(model.module.backbone.state_dict(), args.save)
        print(f"wrote {args.save}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
