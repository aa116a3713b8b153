"""Every file and folder transferscope writes gets the permissions the user's umask gives a new one:
records, weights, configuration, splits, the lock, the report, the analysis cache and its stamp, the
exported tables, the decoded-data cache and the experiment-tracking logs. Checked under umask 022 (a
colleague may read) and 077 (nobody else may)."""

from __future__ import annotations

import importlib.util
import os
import stat

import numpy as np
import pytest
from conftest import TINY
from PIL import Image
from typer.testing import CliRunner

from transferscope import load_config, run_study
from transferscope.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

TRACKING = [b for b in ("tensorboard", "mlflow") if importlib.util.find_spec(b)]


def _image_folder(root) -> None:
    """4 classes of 16 small PNGs: a dataset transferscope decodes once and caches."""
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(16):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_everything_written_follows_the_umask(tmp_path, umask) -> None:
    out, data_cache, images = tmp_path / "study", tmp_path / "data-cache", tmp_path / "images"
    _image_folder(images)
    config = load_config(None, [*TINY, "data.dataset=\"imagefolder\"", f"data.root=\"{images}\"",
                                "treatments.cut_points=[1]", "execution.workers=1", f"data.cache_dir=\"{data_cache}\"",
                                "report.analyses=[\"convergence\", \"filters\"]",
                                f"execution.log={TRACKING!r}".replace("'", '"')])
    before = os.umask(umask)
    try:
        run_study(config, out, progress=False)
        assert CliRunner().invoke(app, ["export", str(out), "--table", "runs", "--table", "history"]).exit_code == 0
    finally:
        os.umask(before)
    written = [p for root in (out, data_cache) for p in [root, *root.rglob("*")]]
    kinds = {p.relative_to(tmp_path).parts[1] if len(p.relative_to(tmp_path).parts) > 1 else "" for p in written}
    assert {"runs", "weights", "report", "cache", "config.toml", "runs.csv", "history.csv"} <= kinds
    assert any(p.suffix == ".safetensors" for p in written) and any(p.name == ".lock" for p in written)
    if TRACKING:
        assert "logs" in kinds
    wrong = [(str(p.relative_to(tmp_path)), oct(stat.S_IMODE(p.stat().st_mode))) for p in written
             if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~umask]
    assert not wrong, f"not {oct(0o666 & ~umask)} (files) / {oct(0o777 & ~umask)} (folders): {wrong}"
