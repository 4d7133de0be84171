"""What the dataset is, said once: the builder's info, the export's card and the infos all read it here."""

from __future__ import annotations

NAME = "bigearthnet_txt"
VERSION = "1.1.0"

DESCRIPTION = (
    "BigEarthNet.txt: 464,044 co-registered Sentinel-1 SAR / Sentinel-2 multispectral patches over Europe "
    "(BigEarthNet v2.0) with 9.55 M texts: captions, binary and multiple-choice VQA, referring expressions "
    "with bounding boxes, and a manually verified `bench` split."
)
HOMEPAGE = "https://txt.bigearth.net"
LICENSE = "cdla-permissive-1.0"  # the Hub's licence id
CITATION = """\
@article{bigearthnet_txt,
  title   = {BigEarthNet.txt: A Large-Scale Multi-Sensor Image-Text Dataset and Benchmark for Earth Observation},
  journal = {arXiv preprint arXiv:2603.29630},
  year    = {2026}
}
@inproceedings{clasen2025reben,
  title     = {reBEN: Refined BigEarthNet Dataset for Remote Sensing Image Analysis},
  author    = {Clasen, Kai Norman and Hackel, Leonard and Burgert, Tom and Sumbul, Gencer and Demir, Beg{\\"u}m and Markl, Volker},
  booktitle = {IEEE International Geoscience and Remote Sensing Symposium (IGARSS)},
  year      = {2025}
}
"""
