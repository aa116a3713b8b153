import pytest

from transferscope.config import StudyConfig, dump_toml, load_config, parse_override, toml_value
from transferscope.errors import UserError


def test_defaults_are_the_digits_study():
    c = load_config()
    assert c.data.dataset == "digits" and c.model.arch == "convnet"
    assert c.treatments.replicates >= 3 and c.treatments.targets == ("B", "A")
    assert set(c.treatments.names) == {"base", "BnB", "BnB+", "AnB", "AnB+", "random"}
    assert c.treatments.size_budget == "steps"  # reduced target data trains as long as the full set


def test_file_and_overrides(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('name = "x"\n[train]\nepochs = 7\nlr = 1\n[treatments]\ncut_points = [1, 3]\nnames = ["base", "AnB"]\n'
                 '[model.options]\nwidths = [4, 8]\n')
    c = load_config(f, ["train.epochs=3", "split.sizes=[4, 6]", "data.dataset=digits", "train.augment=false"])
    assert c.train.epochs == 3 and c.train.lr == 1.0 and isinstance(c.train.lr, float)
    assert c.treatments.cut_points == (1, 3) and c.treatments.names == ("base", "AnB")
    assert c.split.sizes == (4, 6) and c.train.augment is False
    assert c.model.options == {"widths": [4, 8]}


def test_resolved_config_round_trips(tmp_path):
    c = load_config(None, ["train.epochs=3", "treatments.cut_points=[2]", "model.options={widths=[4]}"])
    f = tmp_path / "resolved.toml"
    f.write_text(dump_toml(c))
    assert load_config(f) == c


@pytest.mark.parametrize("override, message", [
    ("train.epochs=ten", r"train.epochs: Input should be a valid integer \(got 'ten'\)"),
    ("train.epoch=3", r"train.epoch: unknown key; allowed: epochs, batch_size"),
    ("colour=3", r"colour: unknown key"),
    ("train.epochs=0", r"train.epochs: Input should be greater than or equal to 1"),
    ("split.kind=foo", r"split.kind: Input should be 'random', 'file', 'groups' or 'natural-vs-manmade'"),
    ('treatments.names=["XnY"]', r"treatments.names.0: Input should be 'base', 'BnB', 'BnB\+', 'AnB', 'AnB\+', "
                                 r"'random', 'AnB-adabn', 'PnT', 'PnT\+', 'PnT-adabn' or 'probe' \(got 'XnY'\)"),
    ('treatments.cut_points="some"', r'treatments.cut_points: .*expected "all" or a list of layer numbers'),
    ("treatments.names=[]", r"treatments.names: .*must not be empty"),
    ('treatments.targets=["C"]', r"treatments.targets.0: Input should be 'A', 'B' or 'T'"),
    ("split.kind=file", r"split.kind = 'file' needs split.file"),
    ("data.val_fraction=0.65", r"val_fraction \+ test_fraction must be below 0.9"),
    ("train.lr=-1", r"train.lr: Input should be greater than 0"),
    ("train.augment=maybe", r"train.augment: Input should be a valid boolean"),
    ("treatments.size_budget=equal", r"treatments.size_budget: Input should be 'steps' or 'epochs' \(got 'equal'\)"),
    ("noequals", r"expected key=value"),
    # seeds reach NumPy's generators, which take no negative seed: refused here, not there
    ("split.seed=-1", r"^defaults with --set: split\.seed: Input should be greater than or equal to 0 \(got -1\)$"),
    ("seed=-1", r"^defaults with --set: seed: Input should be greater than or equal to 0 \(got -1\)$"),
    ("split.sizes=[0, 3]", r"split\.sizes: .*each of \|A\| and \|B\| must be >= 1 \(got \(0, 3\)\)"),
    ("split.sizes=[3, -2]", r"split\.sizes: .*each of \|A\| and \|B\| must be >= 1"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match=r"nope.toml: study file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3")
    with pytest.raises(UserError, match=r"bad.toml: invalid TOML"):
        load_config(bad)
    typed = tmp_path / "typed.toml"
    typed.write_text('[train]\nepochs = "3"\n')
    with pytest.raises(UserError, match=r"typed.toml: train.epochs: Input should be a valid integer"):
        load_config(typed)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match=r"binary.toml: cannot read study file"):
        load_config(binary)


def test_override_values_are_read_as_toml():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=digits") == ("a", "digits")
    assert parse_override("a=true") == ("a", True)


def test_config_is_frozen():
    c = StudyConfig()
    with pytest.raises(Exception):
        c.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize("value", [1, 0.05, 1e-5, True, "cosine", "3", [8, 8], [0.05, 3],
                                   {"widths": [8, 4], "norm": "batch"}])
def test_toml_value_is_read_back_by_set(value):
    """What a refused resume tells the user to --set must mean the recorded value."""
    assert parse_override(f"key={toml_value(value)}") == ("key", value)


@pytest.mark.parametrize("seed", [0, 2**63 - 1])
def test_every_seed_the_configuration_accepts_reaches_numpy(tmp_path, seed):
    """The ends of the allowed range (TOML integers stop at 2**63 - 1) seed every replicate's split
    and partition (NumPy), as a study draws them."""
    from transferscope.study import Study

    study = tmp_path / "s.toml"
    study.write_text(f"seed = {seed}\n[split]\nseed = {seed}\n")
    prepared = Study.prepare(load_config(study, ["treatments.replicates=3"]))
    for replicate in range(3):  # replicate r draws its split from the stream "split" of split.seed and r
        assert prepared.split(replicate).description.endswith(f"(split.seed {seed}, replicate {replicate})")
        assert len(prepared.task(replicate, "A").train) > 0


def test_report_analyses_are_chosen_by_name():
    from transferscope.config import ANALYSES

    assert load_config().report.analyses == ANALYSES  # every analysis by default
    assert load_config(None, ['report.analyses=["cka", "estimate"]']).report.analyses == ("cka", "estimate")
    assert load_config(None, ["report.analyses=[]"]).report.analyses == ()
    with pytest.raises(UserError, match=r"^defaults with --set: report\.analyses\.1: Input should be 'convergence', "
                                        r"'cka', 'estimate', 'filters', 'target_sizes' or 'comparison' \(got 'sizes'\)$"):
        load_config(None, ['report.analyses=["cka", "sizes"]'])
    with pytest.raises(UserError, match=r"report\.analyses: .*must not repeat an entry"):
        load_config(None, ['report.analyses=["cka", "cka"]'])
