"""One rank of the GPU check's 2-GPU NCCL measurement (started by benchmarks.gpu_check under torchrun).

Each rank trains the harness configuration of :func:`benchmarks.gpu_check.configurations` on its own batch
under DistributedDataParallel for ``--steps`` timed steps after a warm-up; rank 0 writes it/s and images/s
(over both GPUs) to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_ddp_worker")
    parser.add_argument("--network", required=True)
    parser.add_argument("--batch", type=int, required=True, help="images per GPU")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", required=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv[1:] if argv[:1] == ["--"] else argv)

    from benchmarks.gpu_check import configurations
    from core.distributed import join_processes
    from core.io import atomic_write_json
    from core.precision import matmul_tf32
    from models.ema import make_ema
    from pipeline.runconfig import RunConfig
    from pipeline.train_data import draw_step
    from pipeline.train_state import build_optimizer
    from pipeline.train_step import train_step

    ctx = join_processes("cuda")                  # as pipeline.train: NCCL, this rank's GPU
    rank, device = ctx.rank, ctx.device
    config = configurations(args.network, args.batch, args.steps, args.compile)["harness"]
    run = RunConfig.from_json(config.run)
    model = run.build_network().to(device).train()
    ema, opt = make_ema(model), build_optimizer(run, model)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index], broadcast_buffers=False)
    net_call = torch.compile(ddp) if args.compile else ddp
    schedule, loss_cfg = run.build_schedule(), run.loss_config()
    shape = (args.batch, model.in_channels, model.input_size, model.input_size)
    generator = torch.Generator(device=device).manual_seed(rank)
    x = torch.randn(shape, generator=generator, device=device)
    y = torch.randint(0, model.num_classes, (args.batch,), generator=generator, device=device)

    def one_step(step: int) -> None:
        draw = draw_step(rank, step, shape, schedule, loss_cfg, False, device).draw
        with matmul_tf32(run.tf32):
            train_step(net_call, model, ema, opt, x, y, draw, schedule, loss_cfg, run)

    for step in range(3):
        one_step(step)
    torch.cuda.synchronize(device)
    dist.barrier()
    began = time.perf_counter()
    for step in range(args.steps):
        one_step(3 + step)
    torch.cuda.synchronize(device)
    dist.barrier()
    seconds = time.perf_counter() - began
    if rank == 0:
        it_s = args.steps / seconds
        atomic_write_json(args.out, {"world_size": dist.get_world_size(), "it_s": it_s,
                                     "images_s": it_s * args.batch * dist.get_world_size(),
                                     "batch_per_gpu": args.batch, "steps_timed": args.steps,
                                     "peak_memory_bytes": torch.cuda.max_memory_allocated(device)})
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
