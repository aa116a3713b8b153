"""transferscope: how transferable are a network's features, layer by layer?

Python API::

    from transferscope import load_config, run_study, load_results
    result = run_study(load_config("study.toml", ["train.epochs=10"]), "results/my-study")
    frame = load_results("results/my-study")   # one row per run, a pandas DataFrame
"""

from transferscope.config import StudyConfig, load_config
from transferscope.driver import StudyResult, run_study
from transferscope.errors import UserError
from transferscope.store import Store
from transferscope.study import Study

__version__ = "0.1.0"


def load_results(directory: str):
    """The runs recorded in a study directory as a pandas DataFrame (the table ``export`` writes)."""

    store = Store(directory)
    store.load_config()  # a clear error when this is not a study directory
    return store.frame()


__all__ = ["Study", "StudyConfig", "StudyResult", "UserError", "load_config", "load_results", "run_study"]
