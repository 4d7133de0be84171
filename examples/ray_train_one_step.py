"""Train one step of a tiny yes/no model with Ray Train, reading a Parquet export through Ray Data.

    python examples/ray_train_one_step.py [--export DIR] [--ray-address ADDR] [--workers 1] [--batch-size 8]

What it shows, end to end and without network (needs ``pip install "bigearthnet-txt[ray,torch]"``):
1. ``bentxt.export.ray_engine.export("s2-binary", ...)`` of the embedded synthetic sample
   (``bentxt/sample``) as a Ray Data job into a temporary folder, unless ``--export DIR`` names
   an existing export holding ``s2-binary`` (a folder, or a Hub repo id);
2. ``bentxt.export.ray_engine.read(export, "s2-binary", "train")``: a ``ray.data.Dataset`` of per-text
   examples, each with its pair's bands as numpy arrays; the publisher's per-band
   normalisation (``Normalize``) runs as a Ray Data ``map_batches`` step;
3. Ray Train: a ``TorchTrainer`` with ``--workers`` CPU workers, each reading its shard
   (``ray.train.get_dataset_shard``) with ``iter_torch_batches`` (``torch_collate``: arrays
   become tensors, texts stay lists);
4. a conv + linear head on the 10 m bands predicting the answer (yes/no), one SGD step on the
   first batch, the loss on the batch before and after, reported back to the driver with a
   checkpoint of the model (Ray Train keeps the metrics that come with a checkpoint).

The model does not read the question, so it cannot learn the task; the point is the data path.
The sample's pixels are synthetic. Uses the Ray this process is connected to, else
``--ray-address`` (or ``RAY_ADDRESS``), else a local Ray started for the run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np
import ray
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn

from bentxt.export import ray_engine
from bentxt.tools.cli import sample_dir
from bentxt.tools.transforms import Normalize

CONFIG = "s2-binary"


class TinyYesNo(nn.Module):
    """4 bands (B02 B03 B04 B08) -> 8 feature maps -> global average -> 2 logits (no, yes)."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_one_step(config: dict) -> None:
    """Runs on each Ray Train worker: its shard of the dataset, one SGD step, the losses reported."""
    torch.manual_seed(config["seed"])
    shard = ray.train.get_dataset_shard("train")
    batch = next(iter(shard.iter_torch_batches(batch_size=config["batch_size"], collate_fn=ray_engine.torch_collate)))
    images = batch["s2_10m"]
    labels = torch.tensor([answer == "yes" for answer in batch["output"]], dtype=torch.long)
    model = TinyYesNo(images.shape[1])
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(model(images), labels)
    loss.backward()
    with torch.no_grad():  # one plain SGD step (torch.optim would import torch._dynamo: +2.5 s for nothing here)
        for parameter in model.parameters():
            parameter -= config["lr"] * parameter.grad
        after = loss_fn(model(images), labels)
    metrics = {
        "shape": list(images.shape), "dtype": str(images.dtype), "mean": float(images.mean()), "std": float(images.std()),
        "question": batch["input"][0], "answer": batch["output"][0], "labels": labels.tolist(),
        "loss_before": loss.item(), "loss_after": after.item(),
    }
    # Ray Train keeps the metrics that come with a checkpoint: rank 0 saves the model beside them
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            torch.save(model.state_dict(), f"{folder}/model.pt")
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", default=None, help="an export holding s2-binary (default: export the sample first)")
    parser.add_argument("--ray-address", default=None, help="a running Ray cluster (default: RAY_ADDRESS, else local)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (CPU)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args(argv)

    with ray_engine.connected(args.ray_address), tempfile.TemporaryDirectory(prefix="ray-train-one-step-") as tmp:
        export = args.export or str(ray_engine.export(CONFIG, f"{tmp}/export", data_dir=sample_dir(),
                                                      cache_dir=f"{tmp}/cache", progress=False))
        train = ray_engine.read(export, CONFIG, "train").select_columns(["s2_10m", "input", "output"])
        train = train.map_batches(Normalize(), batch_format="numpy")  # (B, C, H, W) uint16 -> float32, in Ray Data
        trainer = TorchTrainer(
            train_one_step,
            train_loop_config={"batch_size": args.batch_size, "seed": args.seed, "lr": args.lr},
            scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=False),
            run_config=RunConfig(name="ray_train_one_step", storage_path=f"{tmp}/ray_results"),
            datasets={"train": train},
        )
        metrics = trainer.fit().metrics
    print(f"batch: s2_10m {tuple(metrics['shape'])} {metrics['dtype']}, mean {metrics['mean']:.3f}, "
          f"std {metrics['std']:.3f}; e.g. {metrics['question']!r} -> {metrics['answer']!r}")
    print(f"labels (yes=1): {metrics['labels']}")
    print(f"loss before {metrics['loss_before']:.6f} after {metrics['loss_after']:.6f}")
    return 0 if np.isfinite(metrics["loss_after"]) else 1


if __name__ == "__main__":
    sys.exit(main())
