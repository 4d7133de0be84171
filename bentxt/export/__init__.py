"""The Parquet export for the Hub: one writer (local processes or Ray tasks) and one reader."""

__all__ = ["export", "export_dataset", "iter_examples", "numpy_batches", "push_to_hub", "remove_config"]


def __getattr__(name: str):
    if name in __all__:  # (not an import statement: the builder's cache key ignores the writer)
        import importlib

        return getattr(importlib.import_module("bentxt.export.writer"), name)
    raise AttributeError(f"module 'bentxt.export' has no attribute {name!r}")
