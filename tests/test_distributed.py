"""torch.distributed on CPU with gloo: real ``torchrun --nproc_per_node 2`` runs of
tests/distributed_worker.py (DDP, FSDP2 fully_shard, with_cp under DDP, SyncBN), checked here."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import graphres
from conftest import ROOT

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402

FROZEN = ["--set", "frozen_stages=1", "--set", "norm_eval=true", "--set", "zero_init_residual=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(mode: str, out: Path, *args: str, script: str = "tests/distributed_worker.py") -> list:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), script, mode, str(out), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads((out / f"checks{rank}.json").read_text()) for rank in (0, 1)]


def _single_process_reference(overrides, steps=worker.STEPS):
    """What the 2-rank DDP run computes, in one process: with norm_eval no statistic depends on the
    batch, so DDP's averaged gradient is that of the mean of the two ranks' losses."""
    model = worker.build("specs/resnet18.yaml", overrides)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=worker.LR)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        loss = sum(worker.loss_of(model(worker.batch(rank, step))) for rank in (0, 1)) / 2
        loss.backward()
        opt.step()
    return model


def _assert_frozen_and_norm_eval(checks):
    assert checks["frozen_keys"] == 30 and checks["frozen_unchanged"] and not checks["frozen_requires_grad"]
    assert checks["stats"] == 60 and checks["stats_unchanged"]
    assert checks["trainable"] == 45 and checks["trained_changed"] == 45
    assert checks["params_identical"] and checks["world_size"] == 2


def test_ddp_three_steps(tmp_path):
    c0, c1 = torchrun("ddp", tmp_path, *FROZEN)
    assert c0 == c1
    _assert_frozen_and_norm_eval(c0)
    saved = torch.load(tmp_path / "result.pt")
    ref = _single_process_reference([a for a in FROZEN if a != "--set"]).eval()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(saved["state"][k], v, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        outs = ref(worker.batch(99, 0))
    for a, b in zip(saved["outputs"], outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fsdp2_fully_shard_three_steps(tmp_path):
    c0, c1 = torchrun("fsdp", tmp_path, *FROZEN)
    assert c0 == c1
    _assert_frozen_and_norm_eval(c0)
    assert c0["sharded_params"] == 60  # every parameter is a DTensor, frozen ones too
    saved = torch.load(tmp_path / "result.pt")
    ref = _single_process_reference([a for a in FROZEN if a != "--set"])
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(saved["state"][k], v, rtol=1e-5, atol=1e-6)


def test_with_cp_under_ddp_matches_the_run_without(tmp_path):
    c0, c1 = torchrun("cp", tmp_path, "--set", "zero_init_residual=false")
    for c in (c0, c1):
        # 8 blocks checkpointed in each training forward: the gradient check's and the 3 steps'
        assert c["checkpoint_calls"] == 8 * (1 + worker.STEPS)
        assert c["use_reentrant"] == ["False"]
        assert c["same_grad_names"] and c["grads"] == 60
        assert c["grads_max_diff"] <= 1e-6 and c["params_max_diff"] <= 1e-6
        assert c["params_identical"]


def test_sync_batchnorm_on_cpu_gloo(tmp_path):
    c0, c1 = torchrun("syncbn", tmp_path, "--set", "norm_eval=false")
    for c in (c0, c1):
        # torch's convert_sync_batchnorm: every BN replaced, the keys kept, eval works, train needs a GPU
        assert c["bn_layers"] == 20 and c["converted"] and c["keys_kept"]
        assert c["eval_shapes"] == [[2, 64, 12, 12], [2, 128, 6, 6], [2, 256, 3, 3], [2, 512, 2, 2]]
        assert c["torch_train"] == "ValueError: SyncBatchNorm expected input tensor to be on GPU or XPU or privateuseone"
        # graphres' SyncBN trains on the CPU, the statistics synchronised: the same on both ranks
        assert c["sync_layers"] == 20 and c["stats_identical"] and c["params_identical"]
        assert c["ddp"] == "ValueError: SyncBatchNorm layers only work with GPU modules"  # torch's DDP check
    # ... and equal to BatchNorm on the two ranks' batches together (running statistics, weights)
    saved = torch.load(tmp_path / "result.pt")["state"]
    model = worker.build("specs/resnet18.yaml", ["norm_eval=false"])
    opt = torch.optim.SGD(model.parameters(), lr=worker.LR)
    model.train()
    for step in range(worker.STEPS):
        opt.zero_grad()
        outs = model(torch.cat([worker.batch(rank, step) for rank in (0, 1)]))
        halves = [tuple(o[rank * worker.BATCH:(rank + 1) * worker.BATCH] for o in outs) for rank in (0, 1)]
        (sum(worker.loss_of(h) for h in halves) / 2).backward()
        opt.step()
    ref = model.state_dict()
    assert sorted(saved) == sorted(ref)
    for k, v in ref.items():
        torch.testing.assert_close(saved[k], v, rtol=1e-4, atol=1e-5)
    assert torch.equal(saved["bn1.num_batches_tracked"], torch.tensor(worker.STEPS))


def test_example_train_ddp_script(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = tmp_path / "backbone.pth"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "examples/train_ddp.py", "--spec", "resnet18", "--steps", "4",
           "--batch-size", "2", "--size", "32", "--log-every", "2", "--save", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines if line.startswith("step")] == ["step 2/4", "step 4/4"]
    assert lines[-1] == f"wrote {out}"
    m = graphres.build("specs/resnet18.yaml", checkpoint=out)
    assert m.load_report is not None
