"""Researcher tools on top: the command line, plots, transforms, collate, chat data, scoring, infos."""
