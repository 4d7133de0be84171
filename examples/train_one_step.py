"""Train one step of a tiny yes/no model on the binary VQA rows of the embedded sample.

    python examples/train_one_step.py [--cache-dir DIR] [--num-workers 2] [--batch-size 8]

What it shows, end to end and without network:
1. ``load_dataset("bigearthnet_txt", "s2-binary", data_dir=<the embedded synthetic sample>)``
   (``bentxt/sample``; prepared once into the datasets cache, or ``--cache-dir``);
2. ``with_transform``: a text-consistent random flip / rotation
   (``GeometricAugment``, binary rows are orientation free) then the
   publisher's per-band normalisation (``Normalize``), run inside the workers;
3. ``torch.utils.data.DataLoader(num_workers=2, collate_fn=collate)``: images
   stacked to (B, C, H, W), texts kept as lists, with the publisher's batch
   names ``text_input`` / ``reference_output``;
4. a conv + linear head on the 10 m bands predicting the answer (yes/no),
   one SGD step, the loss on the batch before and after.

The model does not read the question, so it cannot learn the task; the point
is the data path. The sample's pixels are synthetic.
"""

from __future__ import annotations

import argparse
import sys

import datasets
import torch
from torch import nn

import bigearthnet_txt  # noqa: F401  (registers the name "bigearthnet_txt" with datasets)
from bentxt.tools.cli import sample_dir
from bentxt.tools.collate import collate
from bentxt.tools.transforms import GeometricAugment, Normalize


class AugmentThenNormalize:
    """One picklable transform for ``with_transform`` (DataLoader workers receive a copy)."""

    def __init__(self, seed: int):
        self.augment = GeometricAugment(seed=seed, on_orientation_text="skip")
        self.normalize = Normalize()

    def __call__(self, batch):
        return self.normalize(self.augment(batch))


class TinyYesNo(nn.Module):
    """4 bands (B02 B03 B04 B08) -> 8 feature maps -> global average -> 2 logits (no, yes)."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="default: the datasets cache (HF_DATASETS_CACHE)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    train = datasets.load_dataset("bigearthnet_txt", "s2-binary", data_dir=sample_dir(), cache_dir=args.cache_dir, split="train")
    train = train.with_transform(AugmentThenNormalize(args.seed))

    loader = torch.utils.data.DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    batch = next(iter(loader))
    images = batch["s2_10m"]
    labels = torch.tensor([answer == "yes" for answer in batch["reference_output"]], dtype=torch.long)
    print(f"batch: s2_10m {tuple(images.shape)} {images.dtype}, mean {images.mean():.3f}, std {images.std():.3f}; "
          f"{len(batch['text_input'])} questions, e.g. {batch['text_input'][0]!r} -> {batch['reference_output'][0]!r}")
    print(f"image_input groups: {sorted(batch['image_input'])}; labels (yes=1): {labels.tolist()}")

    model = TinyYesNo(images.shape[1])
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    loss = loss_fn(model(images), labels)
    loss.backward()
    with torch.no_grad():  # one plain SGD step (torch.optim would import torch._dynamo: +2.5 s for nothing here)
        for parameter in model.parameters():
            parameter -= args.lr * parameter.grad
    with torch.no_grad():
        after = loss_fn(model(images), labels)
    print(f"loss before {loss.item():.6f} after {after.item():.6f}")
    return 0 if torch.isfinite(after) else 1


if __name__ == "__main__":
    sys.exit(main())
