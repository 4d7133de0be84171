"""Recorded facts about the release (installed as ``bentxt.dataset_infos``): sources.json, dataset_infos.json."""
