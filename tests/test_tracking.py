"""execution.log: a real tiny study logged to TensorBoard and MLflow, read back with each tool's own
reader (TensorBoard's EventAccumulator, MLflow's client) and compared with the run records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transferscope import load_config, run_study
from transferscope.errors import UserError
from transferscope.store import Store
from transferscope.tracking import KEY_TAG, tracking_uri

pytestmark = pytest.mark.usefixtures("one_thread")

BIN = Path(sys.executable).parent
#: two replicates, one cut point, three treatments in both directions: 12 networks, 2 epochs each
STUDY = ["train.epochs=2", "treatments.replicates=2", "model.options={widths=[8,16],fc=[16],dropout=0.5}",
         'treatments.names=["base","BnB","AnB"]', "treatments.cut_points=[1]", "execution.workers=1"]
LOG = 'execution.log=["tensorboard","mlflow"]'


def run(out: Path, *extra: str):
    return run_study(load_config(None, [*STUDY, *extra]), out, progress=False, report=False)


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tracking") / "study"
    result = run(out, LOG)
    assert len(result.failed) == 0 and len(result.frame) == 12
    return out


def records(study: Path) -> dict:
    return {r.key: r for r in Store(study).records()}


def tensorboard_runs(study: Path) -> dict:
    """Run folder -> its EventAccumulator (every run folder under logs/tensorboard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for folder in sorted((study / "logs" / "tensorboard").iterdir()):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        out[folder.name] = acc
    return out


def mlflow_runs(study: Path, experiment: str = "study") -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(study / "logs" / "mlflow"))
    experiment = client.get_experiment_by_name(experiment)
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def test_every_run_is_in_tensorboard_once_with_its_history_and_final_metrics(logged):
    from tensorboard.plugins.hparams import plugin_data_pb2

    recs = records(logged)
    runs = tensorboard_runs(logged)
    assert sorted(runs) == sorted(recs)  # every run once, nothing else (no half-written folder)
    for key, rec in recs.items():
        folder = logged / "logs" / "tensorboard" / key
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        acc = runs[key]
        tags = set(acc.Tags()["scalars"])
        assert tags == {f"history/{c}" for c in rec.history[0] if c != "epoch"} | {f"final/{m}" for m in rec.metrics} \
            | {"final/wall_time_s"}
        for column in ("train_loss", "lr", "val_top1"):
            got = [(e.step, e.value) for e in acc.Scalars(f"history/{column}")]
            assert [s for s, _ in got] == [row["epoch"] for row in rec.history] == [1, 2]
            assert [v for _, v in got] == pytest.approx([row[column] for row in rec.history], rel=1e-6)  # float32
        final = acc.Scalars("final/test_top1")
        assert len(final) == 1 and final[0].step == 2 and final[0].value == pytest.approx(rec.test_top1, rel=1e-6)
        # the run's parameters, as TensorBoard's HParams tab reads them
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["treatment"].string_value == rec.treatment and hparams["role"].string_value == rec.role
        assert hparams["n"].number_value == rec.n and hparams["replicate"].number_value == rec.replicate
        assert hparams["copied_layers"].number_value == rec.copied_layers
        assert hparams["train.lr"].number_value == rec.config["train"]["lr"]


def test_every_run_is_in_mlflow_once_with_params_history_and_final_metrics(logged):
    recs = records(logged)
    client, runs = mlflow_runs(logged)
    assert sorted(r.info.run_name for r in runs) == sorted(recs)
    # MLflow's UI lists the experiment's training runs (not GenAI traces)
    assert client.get_experiment_by_name("study").tags["mlflow.experimentKind"] == "custom_model_development"
    for run in runs:
        rec = recs[run.info.run_name]
        assert run.data.tags[KEY_TAG] == rec.key and run.info.status == "FINISHED"
        params = run.data.params
        assert params["treatment"] == rec.treatment and params["role"] == rec.role
        assert params["n"] == str(rec.n) and params["replicate"] == str(rec.replicate)
        assert params["target"] == rec.target and params["copied_layers"] == str(rec.copied_layers)
        assert params["frozen_layers"] == str(rec.frozen_layers)
        assert params["train.lr"] == str(rec.config["train"]["lr"])
        assert params["train.epochs"] == "2" and params["data.dataset"] == "digits"
        assert json.loads(params["model.options.widths"]) == [8, 16]
        for column in ("train_loss", "lr", "val_top1"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"history/{column}"))
            assert history == [(row["epoch"], row[column]) for row in rec.history]  # exact: MLflow keeps doubles
        for name, value in rec.metrics.items():
            assert run.data.metrics[f"final/{name}"] == value
        assert client.get_metric_history(run.info.run_id, "final/test_top1")[0].step == 2


def test_a_resumed_study_logs_nothing_twice_and_fills_in_what_a_backend_lacks(logged, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(logged, study)
    client, runs = mlflow_runs(study)
    ids = {r.info.run_name: r.info.run_id for r in runs}
    client.delete_run(ids["r0-AnB-n1"])  # as if the driver had stopped between the record and the log
    client.delete_run(ids["r0-BnA-n1"])  # ... or in the middle of the log: a run without its last tag
    experiment = client.get_experiment_by_name("study").experiment_id
    cut = client.create_run(experiment, run_name="r0-BnA-n1", tags={KEY_TAG: "r0-BnA-n1"}).info.run_id
    shutil.rmtree(study / "logs" / "tensorboard" / "r1-baseA")
    events = {p.relative_to(study): p.read_bytes() for p in (study / "logs" / "tensorboard").rglob("events.*")}

    result = run(study, LOG)  # everything recorded: nothing trains
    assert len(result.failed) == 0

    client, runs = mlflow_runs(study)
    now = {r.info.run_name: r.info.run_id for r in runs}
    assert sorted(now) == sorted(records(study))
    again = ("r0-AnB-n1", "r0-BnA-n1")
    assert {k: v for k, v in now.items() if k not in again} == {k: v for k, v in ids.items() if k not in again}
    assert now["r0-BnA-n1"] != cut and client.get_run(cut).info.lifecycle_stage == "deleted"
    assert sorted(tensorboard_runs(study)) == sorted(records(study))
    after = {p.relative_to(study): p.read_bytes() for p in (study / "logs" / "tensorboard").rglob("events.*")}
    assert {k: v for k, v in after.items() if k.parent.name != "r1-baseA"} == events
    assert len(list((study / "logs" / "tensorboard" / "r1-baseA").glob("events.*"))) == 1


def test_a_retried_run_replaces_its_entry(logged, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(logged, study)
    path = study / "runs" / "r1-BnA-n1.json"
    failed = {**json.loads(path.read_text()), "status": "failed", "error": "RuntimeError: boom"}
    path.write_text(json.dumps(failed))
    _, runs = mlflow_runs(study)
    old = next(r.info.run_id for r in runs if r.info.run_name == "r1-BnA-n1")

    run(study, LOG)  # trains r1-BnA-n1 again

    client, runs = mlflow_runs(study)
    again = [r for r in runs if r.info.run_name == "r1-BnA-n1"]
    assert len(again) == 1 and again[0].info.run_id != old and len(runs) == 12
    rec = records(study)["r1-BnA-n1"]
    assert rec.status == "done" and again[0].data.metrics["final/test_top1"] == rec.test_top1
    folder = study / "logs" / "tensorboard" / "r1-BnA-n1"
    assert len(list(folder.glob("events.*"))) == 1


def test_a_run_recorded_again_while_logging_was_off_is_logged_again_and_a_renamed_study_keeps_its_experiment(
        logged, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(logged, study)
    path = study / "runs" / "r0-BnB-n1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "failed", "error": "RuntimeError: boom"}))
    _, runs = mlflow_runs(study)
    before = {r.info.run_name: r.info.run_id for r in runs}
    mark = (study / "logs" / "tensorboard" / "r0-BnB-n1" / "transferscope.json").read_text()

    time.sleep(1.1)  # records are stamped to the second: the retrained one is finished later than the logged one
    run(study)  # retrained with logging off: the backends hold the old record
    run(study, LOG, "name=renamed")

    client, runs = mlflow_runs(study, "renamed")
    now = {r.info.run_name: r.info.run_id for r in runs}
    assert client.get_experiment_by_name("study") is None and len(client.search_experiments()) == 2  # and Default
    assert sorted(now) == sorted(before)
    assert [k for k in now if now[k] != before[k]] == ["r0-BnB-n1"]
    rec = records(study)["r0-BnB-n1"]
    new = next(r for r in runs if r.info.run_name == "r0-BnB-n1")
    assert new.data.tags["transferscope.finished_at"] == rec.finished_at
    assert new.data.metrics["final/test_top1"] == rec.test_top1
    again = json.loads((study / "logs" / "tensorboard" / "r0-BnB-n1" / "transferscope.json").read_text())
    assert again == {"key": "r0-BnB-n1", "status": "done", "finished_at": rec.finished_at} != json.loads(mark)


def test_logging_switched_on_for_a_finished_study_logs_every_run(tmp_path):
    study = tmp_path / "study"
    run(study)
    assert not (study / "logs").exists()
    run(study, 'execution.log=["tensorboard"]')  # MLflow's filling in is checked above, on a copy of `logged`
    assert sorted(tensorboard_runs(study)) == sorted(records(study))
    assert not (study / "logs" / "mlflow").exists()


def test_an_unknown_backend_is_one_line_naming_the_allowed_ones():
    with pytest.raises(UserError, match=r"execution\.log: .*'wandb'.*allowed: tensorboard, mlflow"):
        load_config(None, ['execution.log=["tensorboard","wandb"]'])


def missing_line(package: str) -> str:
    return f'transferscope: error: execution.log: "{package}" needs the {package} package: ' \
        f"pip install 'transferscope[{package}]'"


def test_a_missing_package_is_one_line_exit_2_before_anything_runs(tmp_path):
    """As a user without MLflow sees it: the command in a fresh process, mlflow shadowed by a
    package that cannot be imported."""
    shadow = tmp_path / "shadow" / "mlflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no mlflow here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    res = subprocess.run([str(BIN / "transferscope"), "run", "-q", "-o", str(tmp_path / "out"),
                          *[f"--set={s}" for s in STUDY], f"--set={LOG}"],
                         capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == missing_line("mlflow")
    assert not (tmp_path / "out").exists()


def test_without_tensorboard_the_same_line_names_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from transferscope.cli import app

    for module in ("tensorboard", "torch.utils.tensorboard"):  # None in sys.modules: the import fails
        monkeypatch.setitem(sys.modules, module, None)
    res = CliRunner().invoke(app, ["run", "-q", "-o", str(tmp_path / "out"), *[f"--set={s}" for s in STUDY],
                                   f"--set={LOG}"])
    assert res.exit_code == 2 and res.stderr.strip() == missing_line("tensorboard")
    assert not (tmp_path / "out").exists()


def test_a_missing_part_of_the_mlflow_extra_is_named(monkeypatch):
    from transferscope.tracking import check_available

    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # MLflow's client without the SQLite store's packages
    with pytest.raises(UserError, match=r'^execution\.log: "mlflow" needs the sqlalchemy package: '
                                        r"pip install 'transferscope\[mlflow\]'$"):
        check_available(["tensorboard", "mlflow"])

