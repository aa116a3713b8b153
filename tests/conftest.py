import pytest
import torch

from transferscope.config import load_config
from transferscope.study import Study

#: a study small enough for unit tests: tiny net, few epochs, one replicate
TINY = ["train.epochs=2", "treatments.replicates=1", "model.options={widths=[8,16],fc=[16],dropout=0.5}"]


@pytest.fixture(scope="session")
def tiny_study() -> Study:
    torch.set_num_threads(1)
    return Study.prepare(load_config(None, TINY))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is faster, and much faster on a busy machine; the module's
    tests run with it and the thread count is restored after (a module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_network(study, spec, sources):
    """The network a run starts from, with ``sources`` (trained CutNets by key) as its donors."""
    from transferscope.runner import Runner

    return Runner(study, lambda key: sources[key].state_dict()).build_network(spec)


class RunsCode:
    """What a tampered file holds: unpickling it runs ``touch marker`` (os.system). Tests show that
    transferscope refuses it and that the marker never appears."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)
