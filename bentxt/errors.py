"""The one base class of the package's errors.

Every exception class in ``bentxt`` derives from :class:`BigEarthNetTxtError`,
so a caller can catch everything this package raises about its data or its
options with one ``except``, and tell it apart from a bug elsewhere. Each class
also keeps the built-in base it had before (``ValueError``, ``ConnectionError``,
...), so existing ``except ValueError`` code still catches it.
``tests/test_errors.py`` imports every module and checks this for every class.
"""

from __future__ import annotations


class BigEarthNetTxtError(Exception):
    """Base class of all errors raised by the ``bentxt`` package and the ``bigearthnet_txt`` builder."""
