"""genlab.config: defaults, one-line errors naming the bad key, params loading and the CLI's error path."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch
import yaml

from genlab import cli
from genlab.config import LDMConfig, Params, flatten, load_params, validate
from genlab.errors import ConfigError, GenlabError


def _error(raw: object) -> str:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    message = str(info.value)
    assert "\n" not in message, f"ConfigError must be one line, got {message!r}"
    return message


def test_validate_empty_gives_documented_defaults() -> None:
    p = validate({})
    assert p == Params()
    assert (p.seed, p.device) == (0, "auto")
    assert (p.data.source, p.data.image_size, p.data.val_fraction, p.data.test_fraction) == ("digits", 16, 0.1, 0.2)
    ev = p.evaluator
    assert (ev.train_images, ev.batch_size, ev.lr, ev.width) == (40000, 64, 1e-3, 32)
    assert (ev.log_every_images, ev.checkpoint_every_images) == (2048, 20000)
    v = p.vae
    assert (v.train_images, v.base_channels, v.latent_channels, v.downsample) == (80000, 32, 4, None)  # follows size
    assert (v.beta, v.kl_warmup_images, v.recon_sigma, v.ae_baseline) == (1.0, 20000, 0.05, True)
    m = p.ldm
    assert (m.train_images, m.batch_size, m.lr, m.lr_schedule, m.base_channels) == (240000, 128, 7e-4, "constant", 48)
    assert (p.compute.precision, v.precision, p.gan.precision) == ("fp32", "auto", "auto")
    assert ev.precision is m.precision is p.pixel.precision is None  # compute.precision's
    assert (p.pixel.batch_size, p.pixel.lr) == (64, 5e-4)
    assert (m.conditioning, m.cross_attention_levels, p.pixel.conditioning) == ("class+text", (), "class")
    assert (m.channel_mults, m.num_res_blocks, m.attention_levels) == ((1, 2, 2), 1, (2,))
    assert (m.timesteps, m.schedule, m.p_uncond, m.ema_halflife_images) == (1000, "linear", 0.1, 20000)
    assert (m.sample_steps, m.eta, m.guidance_scale, p.pixel.sample_steps) == (25, 0.0, 1.25, 50)
    g = p.gan
    assert (g.train_images, g.lr, g.z_dim, g.base_channels, g.ema_halflife_images) == (150000, 2e-4, 64, 32, 2000)
    assert (p.sample.n_per_class, p.sample.seed, p.sample.batch_size) == (36, 1234, 256)
    e = p.evaluate
    assert (e.kid_subset_size, e.pr_neighbourhood, e.batch_size) == (100, 3, 256)
    assert e.feature_extractor_weights_path is None


def test_validate_accepts_and_keeps_overrides() -> None:
    p = validate({"seed": 3, "ldm": {"channel_mults": [1, 2], "attention_levels": [0, 1], "timesteps": 100,
                                      "sample_steps": 100, "schedule": "cosine"}})
    assert p.seed == 3
    assert p.ldm.channel_mults == (1, 2) and p.ldm.attention_levels == (0, 1)
    assert (p.ldm.timesteps, p.ldm.sample_steps, p.ldm.schedule) == (100, 100, "cosine")
    assert p.vae == Params().vae  # untouched sections keep their defaults


def test_unknown_top_level_key() -> None:
    message = _error({"sedd": 1})
    assert "sedd" in message and "unknown key" in message


def test_unknown_nested_key_names_dotted_path() -> None:
    message = _error({"vae": {"betta": 1}})
    assert "vae.betta" in message and "unknown key" in message


def test_wrong_type_names_key() -> None:
    message = _error({"ldm": {"lr": "fast"}})
    assert "ldm.lr" in message and "'fast'" in message


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"ldm": {"guidance_scale": -1}}, ("ldm.guidance_scale",)),
        ({"ldm": {"lr": 2.0}}, ("ldm.lr",)),
        ({"ldm": {"eta": 1.5}}, ("ldm.eta",)),
        ({"data": {"image_size": 128}}, ("data.image_size",)),
        ({"data": {"image_size": 12}}, ("data", "image_size", "power of two")),
        ({"ldm": {"sample_steps": 60, "timesteps": 50}}, ("ldm", "sample_steps", "timesteps")),
        ({"ldm": {"attention_levels": [3]}}, ("ldm", "attention_levels", "[3]")),
        ({"ldm": {"channel_mults": [1, 2]}}, ("ldm", "attention_levels", "[2]")),  # default (2,) out of range
        ({"ldm": {"channel_mults": [], "attention_levels": []}}, ("ldm", "channel_mults")),
        ({"ldm": {"schedule": "quadratic"}}, ("ldm.schedule",)),
        ({"device": "tpu"}, ("device",)),
        ({"seed": -1}, ("seed",)),
    ],
)
def test_out_of_range_names_key(raw: dict, names: tuple[str, ...]) -> None:
    message = _error(raw)
    for name in names:
        assert name in message, f"{name!r} missing from {message!r}"


def test_boundaries_are_accepted() -> None:
    # The largest legal values next to the rejected ones above: the validators are not off by one.
    p = validate({"data": {"image_size": 64}, "ldm": {"sample_steps": 50, "timesteps": 50, "eta": 1.0,
                                                      "guidance_scale": 0, "attention_levels": [0, 2]}})
    assert p.data.image_size == 64 and p.ldm.sample_steps == p.ldm.timesteps == 50
    assert validate({"data": {"image_size": 8}}).data.image_size == 8


def test_several_errors_report_the_first_and_a_count() -> None:
    message = _error({"vae": {"betta": 1, "beta": -1}})
    assert "(and 1 more)" in message


def test_non_mapping_is_rejected() -> None:
    message = _error([1, 2])
    assert "mapping" in message and "list" in message


def test_sections_are_frozen() -> None:
    cfg = LDMConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.lr = 0.1  # type: ignore[misc]
    assert cfg.lr == 7e-4


def test_flatten_uses_dotted_keys() -> None:
    flat = flatten(validate({"seed": 5}))
    assert flat["seed"] == 5
    assert flat["vae.beta"] == 1.0
    assert flat["ldm.channel_mults"] == [1, 2, 2]
    assert "vae" not in flat


def test_ConfigError_is_a_GenlabError() -> None:
    assert issubclass(ConfigError, GenlabError)


def test_load_params_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_params_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data: [1, 2\nvae:\n  beta: 1\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message and "YAML" in message and "\n" not in message


def test_load_params_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"vae": {"betta": 1}}))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: ") and "vae.betta" in str(info.value)


def test_load_params_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_params(path) == Params()


def test_repo_params_yaml_is_valid() -> None:
    path = Path(__file__).resolve().parents[1] / "params.yaml"
    if not path.is_file():
        pytest.skip("no params.yaml in the repository")
    assert isinstance(load_params(path), Params)


@pytest.fixture
def cli_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    return tmp_path


def _assert_cli_fails_cleanly(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              expected: tuple[str, ...], keep: set[str]) -> None:
    assert cli.main(argv) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1, err_lines
    assert err_lines[0].startswith("genlab: error:")
    for text in expected:
        assert text in err_lines[0]
    assert {p.name for p in tmp_path.iterdir()} == keep  # nothing written: no data/, metrics/, mlflow.db


def test_cli_bad_params_exits_2_and_writes_nothing(cli_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = cli_dir / "bad.yaml"
    params.write_text(yaml.safe_dump({"vae": {"betta": 1}}))
    _assert_cli_fails_cleanly(["prepare", "--params", str(params)], cli_dir, capsys, ("vae.betta",), {"bad.yaml"})


def test_cli_validates_sections_the_stage_does_not_read(cli_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = cli_dir / "params.yaml"
    params.write_text(yaml.safe_dump({"gan": {"lr": "fast"}}))
    _assert_cli_fails_cleanly(["prepare", "--params", str(params)], cli_dir, capsys, ("gan.lr",), {"params.yaml"})


def test_cli_missing_params_file(cli_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_cli_fails_cleanly(["prepare", "--params", "missing.yaml"], cli_dir, capsys, ("missing.yaml",), set())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_cli_cuda_without_cuda_is_a_user_error(cli_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = cli_dir / "params.yaml"
    params.write_text(yaml.safe_dump({"device": "cuda"}))
    _assert_cli_fails_cleanly(["prepare", "--params", str(params)], cli_dir, capsys, ("cuda",), {"params.yaml"})


def test_params_yaml_spells_out_the_documented_defaults() -> None:
    """One source of defaults: the committed params.yaml equals the config classes' defaults."""
    from pathlib import Path

    from genlab.config import Params, load_params

    assert load_params(Path(__file__).resolve().parents[1] / "params.yaml") == Params()
