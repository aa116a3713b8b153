"""transferscope: how transferable are a network's features, layer by layer?

Python API::

    from transferscope import load_config, run_study, load_results
    result = run_study(load_config("study.toml", ["train.epochs=10"]), "results/my-study")
    frame = load_results("results/my-study")   # one row per run, a pandas DataFrame

The names below are imported when first used (PEP 562), so that a command which needs none of
torch (``transferscope --help``, a report whose inputs are unchanged) starts in a fraction of a
second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {"StudyConfig": "config", "load_config": "config", "StudyResult": "driver", "run_study": "driver",
            "UserError": "errors", "Store": "store", "Study": "study"}

if TYPE_CHECKING:
    from transferscope.config import StudyConfig, load_config
    from transferscope.driver import StudyResult, run_study
    from transferscope.errors import UserError
    from transferscope.study import Study


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"transferscope.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'transferscope' has no attribute {name!r}")


def load_results(directory: str):
    """The runs recorded in a study directory as a pandas DataFrame (the table ``export`` writes)."""
    store = __getattr__("Store")(directory)
    store.load_config()  # a clear error when this is not a study directory
    return store.frame()


__all__ = ["Study", "StudyConfig", "StudyResult", "UserError", "load_config", "load_results", "run_study"]
