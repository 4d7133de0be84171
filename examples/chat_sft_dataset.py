"""Turn a prepared bigearthnet_txt config into a TRL-ready vision chat dataset (``messages`` + ``images``).

    python examples/chat_sft_dataset.py                      # the embedded synthetic sample, s2-all
    python examples/chat_sft_dataset.py --config s2-vqa --data-dir /data/BigEarthNet.txt --output chat-s2-vqa

The result is what TRL's ``SFTTrainer`` takes for vision-language models and
what ``processor.apply_chat_template(example["messages"])`` renders; trl and
transformers are not needed to build it. With them installed, training is::

    from trl import SFTConfig, SFTTrainer
    trainer = SFTTrainer(model="<a vision-language model>", train_dataset=chat["train"],
                         args=SFTConfig(output_dir="out", max_length=None))
"""

from __future__ import annotations

import argparse

import datasets

import bigearthnet_txt  # noqa: F401  (registers the "bigearthnet_txt" name)
from bentxt.tools.chat import IMAGE_CHOICES, TAG_CHOICES, chat_dataset
from bentxt.tools.cli import sample_dir
from bentxt.registration import builder_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="s2-all")
    parser.add_argument("--data-dir", default=sample_dir(), help="default: the embedded synthetic sample")
    parser.add_argument("--image", choices=IMAGE_CHOICES, default="rgb")
    parser.add_argument("--tags", choices=TAG_CHOICES, default="keep")
    parser.add_argument("--output", default=None, help="save_to_disk folder (default: only print an example)")
    args = parser.parse_args()

    builder = builder_for(args.config, data_dir=args.data_dir)  # the cache load_dataset("bigearthnet_txt", ...) uses
    builder.download_and_prepare()
    prepared = builder.as_dataset()
    chat = datasets.DatasetDict(
        {split: chat_dataset(part, builder.config, image=args.image, tags=args.tags, format_hints=True)
         for split, part in prepared.items()}
    )
    print(chat)
    example = chat["train"][0] if "train" in chat else next(iter(chat.values()))[0]
    for message in example["messages"]:
        parts = [p["text"] if p["type"] == "text" else "<image>" for p in message["content"]]
        print(f"{message['role']}: {' '.join(parts)}")
    print("images:", example["images"])
    if args.output:
        chat.save_to_disk(args.output)
        print(f"saved to {args.output}: datasets.load_from_disk({args.output!r})")


if __name__ == "__main__":
    main()
