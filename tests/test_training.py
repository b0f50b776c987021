"""Training infrastructure: configuration, EMA, checkpoints and the training loop (pure PyTorch)."""

from __future__ import annotations

import json
import math
import os
import random
import signal

import numpy as np
import pytest
import torch
from torch import nn

from pidm_fem.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_run_checkpoint,
)
from pidm_fem.training.config import (
    ConfigError,
    RunConfig,
    TrainingConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    trained_configuration,
)
from pidm_fem.errors import Interrupted
from pidm_fem.training.ema import EMA
from pidm_fem.training.trainer import Trainer, TrainingDiverged, learning_rate

# ---------------------------------------------------------------- configuration


def test_config_defaults_and_round_trip(tmp_path):
    default = config_from_dict(None)
    assert default == RunConfig()
    assert default.training.lr == 1e-3 and default.diffusion.T == 100 and default.model.kind == "mesh"
    cfg = config_from_dict(
        {
            "model": {"kind": "mesh", "width": 16},
            "diffusion": {"method": "ddpm", "c_residual": 0},
            "training": {"steps": 20, "lr": 3e-4, "device": "cpu"},
        }
    )
    assert cfg.model.width == 16 and cfg.model.attention is True
    assert isinstance(cfg.diffusion.c_residual, float)  # an int given for a float key becomes a float
    path = save_config(cfg, tmp_path / "sub" / "run.yaml")
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_to_dict(cfg)["training"]["lr"] == 3e-4


def test_load_config_from_yaml_text(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "# a run\n"
        "diffusion:\n  T: 50\n  c_residual: 1e-3   # YAML 1.1 alone would read this as a string\n"
        "training:\n  lr: 2e-4\n  steps: 300\n  ema_decay: 0.999\n"
        "sampling:\n  sampler: ddim\n  ddim_steps: 10\n"
        "data:\n"
    )
    cfg = load_config(path)
    assert cfg.diffusion.T == 50 and cfg.diffusion.c_residual == 1e-3
    assert cfg.training.lr == 2e-4 and cfg.training.steps == 300 and cfg.training.ema_decay == 0.999
    assert cfg.sampling.sampler == "ddim" and cfg.sampling.ddim_steps == 10
    assert cfg.data == RunConfig().data
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == RunConfig()


@pytest.mark.parametrize(
    "text, message",
    [
        ("training:\n  lrr: 0.1\n", "training.lrr: unknown key (did you mean lr?)"),
        ("trainig:\n  lr: 0.1\n", "trainig: unknown section (did you mean training?)"),
        ("training:\n  lr: -1\n", "training.lr: must be > 0, got -1.0"),
        ("training:\n  ema_decay: 1.0\n", "training.ema_decay: must be in [0, 1), got 1.0"),
        ("training:\n  lr: true\n", "training.lr: must be a number, got bool True"),
        ("training:\n  steps: ten\n", "training.steps: must be an integer, got str 'ten'"),
        ("training:\n  steps: 2.5\n", "training.steps: must be an integer, got float 2.5"),
        ("model:\n  attention: 1\n", "model.attention: must be true or false, got int 1"),
        (
            "diffusion:\n  method: pdim\n",
            "diffusion.method: must be one of 'pidm', 'ddpm', 'physics_guided', got 'pdim' (did you mean 'pidm'?)",
        ),
        ("training:\n  device: gpu\n", "training.device: must be a torch device such as 'cpu' or 'cuda:0', got 'gpu'"),
        ("sampling:\n  ddim_steps: 500\n", "sampling.ddim_steps: must be <= diffusion.T (100), got 500"),
        ("expert:\n  below: 200\n", "expert.below: must be at most diffusion.T (100), got 200"),
        ("expert:\n  width: 0\n", "expert.width: must be >= 1, got 0"),
        ("cocogen:\n  apply_to: ddpm\n", "cocogen.apply_to: must be a list, got str 'ddpm'"),
        ("preset: paperr\n", "preset: must be one of 'project', 'paper', got 'paperr'"),
        ("training:\n  lr_schedule: linear\n", "training.lr_schedule: must be one of 'constant', 'cosine'"),
        ("training: [1, 2]\n", "training: must be a mapping of keys to values, got list"),
        ("training:\n  lr: 0.1\n  lr: 0.2\n", "invalid YAML: duplicate key 'lr' (line 3, column 3)"),
        ("training: {lr: 0.1\n", "invalid YAML:"),
    ],
)
def test_config_errors_are_one_line_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {message}")
    assert "\n" not in str(info.value)


def test_config_error_without_file_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^<dict>: training\.batch_size: must be >= 1, got 0$"):
        config_from_dict({"training": {"batch_size": 0}})
    with pytest.raises(ConfigError, match=r"^training\.lr: must be > 0"):
        TrainingConfig(lr=0.0)
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the file"):
        load_config(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- EMA


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def test_ema_arithmetic_by_hand():
    model = _Tiny()
    ema = EMA(model, decay=0.75, start=2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([4.0, -8.0]))
        model.count.fill_(1)
    ema.update(model, step=1)  # before the start: a copy
    assert torch.equal(ema.averaged_state_dict()["weight"], torch.tensor([4.0, -8.0]))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([8.0, 0.0]))
        model.count.fill_(2)
    ema.update(model, step=2)  # 0.75 * [4, -8] + 0.25 * [8, 0]
    assert torch.equal(ema.averaged_state_dict()["weight"], torch.tensor([5.0, -6.0]))
    assert ema.averaged_state_dict()["count"].item() == 2  # buffers are copied
    ema.update(model, step=3)  # 0.75 * [5, -6] + 0.25 * [8, 0]
    assert torch.equal(ema.averaged_state_dict()["weight"], torch.tensor([5.75, -4.5]))

    with ema.applied_to(model):
        assert torch.equal(model.weight.detach(), torch.tensor([5.75, -4.5]))
    assert torch.equal(model.weight.detach(), torch.tensor([8.0, 0.0]))

    other = EMA(_Tiny(), decay=0.5, start=0)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.75 and other.start == 2
    assert torch.equal(other.averaged_state_dict()["weight"], torch.tensor([5.75, -4.5]))
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


# ---------------------------------------------------------------- checkpoints


def _checkpoint(model: nn.Module, fingerprint: str = "abc", **extra) -> Checkpoint:
    generator = torch.Generator().manual_seed(0)
    return Checkpoint(
        step=7,
        model=model.state_dict(),
        ema=EMA(model, 0.9).state_dict(),
        optimizer=torch.optim.Adam(model.parameters()).state_dict(),
        rng=capture_rng_state(generator),
        sampler={},
        config=config_to_dict(RunConfig()),
        mesh_fingerprint=fingerprint,
        extra=extra,
    )


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "a.pt", _checkpoint(model, mean=torch.ones(3), names=["p", "K"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # no temporary file left
    loaded = load_checkpoint(path, mesh_fingerprint="abc")
    assert loaded.step == 7 and loaded.extra["names"] == ["p", "K"]
    assert torch.equal(loaded.model["weight"], model.weight.detach())
    assert loaded.config == config_to_dict(RunConfig())

    with pytest.raises(CheckpointError, match=r"a\.pt: made on another mesh \(fingerprint 'abc', current mesh 'xyz'\)"):
        load_checkpoint(path, mesh_fingerprint="xyz")
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"bad\.pt: unreadable or corrupt checkpoint") as info:
        load_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(info.value)
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pidm_fem checkpoint"):
        load_checkpoint(tmp_path / "other.pt")

    with pytest.raises(CheckpointError, match=r"cannot store extra\['mean'\] is a numpy\.ndarray"):
        save_checkpoint(tmp_path / "c.pt", _checkpoint(model, mean=np.ones(3)))
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to write non-finite weights"):
        save_checkpoint(tmp_path / "c.pt", _checkpoint(model))
    assert not (tmp_path / "c.pt").exists()


def test_run_checkpoints_keep_every(tmp_path):
    model = nn.Linear(2, 2)
    save_run_checkpoint(tmp_path, _checkpoint(model), keep_every=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    save_run_checkpoint(tmp_path, _checkpoint(model), keep_every=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step_00000007.pt"]
    assert load_checkpoint(tmp_path / "step_00000007.pt").step == 7


def test_rng_states_restore_every_generator():
    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = capture_rng_state(generator)

    def draws():
        return (torch.rand(3), torch.rand(3, generator=generator), np.random.rand(3), random.random())

    first = draws()
    restore_rng_state(state, generator)
    second = draws()
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- trainer


def _data(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return {"x": x, "y": x.sum(dim=1, keepdim=True).sin()}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.SiLU(), nn.Dropout(0.1), nn.Linear(16, 1))


def _toy_loss(model, batch, generator):
    """A noisy regression loss that draws from the generator, as diffusion losses do."""
    noise = 0.1 * torch.randn(batch["x"].shape, generator=generator)
    error = (model(batch["x"] + noise) - batch["y"]) ** 2
    data = error.mean()
    penalty = 1e-3 * sum(p.pow(2).sum() for p in model.parameters())
    return data + penalty, {"data": data.item(), "residual": penalty.item()}


def _config(steps: int, diffusion: dict | None = None, **training) -> RunConfig:
    settings = dict(
        steps=steps, batch_size=5, lr=1e-2, ema_decay=0.9, ema_start=3, val_every=2, checkpoint_every=2, log_every=2
    )
    settings.update(training)
    return config_from_dict({"training": settings, "diffusion": diffusion or {}})


def _train(run_dir, steps: int, callback=None, diffusion: dict | None = None, **training):
    trainer = Trainer(
        _model(),
        _toy_loss,
        _data(12, seed=1),
        _config(steps, diffusion, **training),
        run_dir,
        val_data=_data(7, seed=2),
        mesh_fingerprint="mesh-1",
        extra={"mean": torch.zeros(4)},
        callback=callback,
        progress=False,
    )
    return trainer, trainer.train()


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _assert_same_state(a: Trainer, b: Trainer):
    for (key, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), key
    for key, x in a.ema.averaged_state_dict().items():
        assert torch.equal(x, b.ema.averaged_state_dict()[key]), key
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for index, state in sa["state"].items():
        for key, value in state.items():
            assert torch.equal(value, sb["state"][index][key]), (index, key)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def _without_time(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in ("seconds", "seconds_per_step")} for line in lines]


def test_resume_equals_uninterrupted_training(tmp_path):
    whole, summary = _train(tmp_path / "whole", steps=8)
    assert (summary.first_step, summary.last_step) == (0, 8)
    assert set(summary.components) == {"loss", "data", "residual"}

    first, _ = _train(tmp_path / "split", steps=4)
    resumed = Trainer(
        _model(), _toy_loss, _data(12, seed=1), _config(8), tmp_path / "split",
        val_data=_data(7, seed=2), mesh_fingerprint="mesh-1", progress=False,
    )  # fmt: skip
    assert resumed.step == 4
    summary = resumed.train()
    assert (summary.first_step, summary.last_step) == (4, 8)
    _assert_same_state(whole, resumed)
    assert _without_time(_log(tmp_path / "whole")) == _without_time(_log(tmp_path / "split"))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_a_crash_repeats_the_lost_steps(tmp_path, schedule):
    whole, _ = _train(tmp_path / "whole", steps=8, checkpoint_every=3, lr_schedule=schedule)

    def crash(record):
        if record.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "crash", steps=8, checkpoint_every=3, callback=crash, lr_schedule=schedule)
    assert load_checkpoint(tmp_path / "crash" / "last.pt").step == 3
    assert _log(tmp_path / "crash")[-1]["step"] == 4  # lines beyond the checkpoint were written
    resumed, _ = _train(tmp_path / "crash", steps=8, checkpoint_every=3, lr_schedule=schedule)
    _assert_same_state(whole, resumed)
    steps = [(line["split"], line["step"]) for line in _log(tmp_path / "crash")]
    assert steps == [(line["split"], line["step"]) for line in _log(tmp_path / "whole")]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_checkpoints_its_step_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, signum):
    whole, _ = _train(tmp_path / "whole", steps=8, checkpoint_every=4)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, the default handler otherwise

    def stop(record):
        if record.step == 5:
            os.kill(os.getpid(), signum)

    with pytest.raises(Interrupted) as info:
        _train(tmp_path / "stopped", steps=8, checkpoint_every=4, callback=stop)
    assert load_checkpoint(tmp_path / "stopped" / "last.pt").step == 5
    assert info.value.exit_code == 128 + signum and "at step 5 of 8" in str(info.value)
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are restored
    resumed, _ = _train(tmp_path / "stopped", steps=8, checkpoint_every=4)
    _assert_same_state(whole, resumed)


def test_learning_rate_schedules():
    constant = _config(10).training
    assert [learning_rate(constant, step) for step in (1, 5, 10)] == [1e-2] * 3
    cosine = _config(10, lr_schedule="cosine").training
    rates = [learning_rate(cosine, step) for step in range(1, 11)]
    assert rates[0] == 1e-2 and rates[5] == pytest.approx(0.5e-2)  # step 6 is half-way: cos(pi / 2) = 0
    assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] > 0
    assert rates[-1] == pytest.approx(1e-2 * (1 - math.cos(math.pi / 10)) / 2)


def test_cosine_schedule_reaches_the_optimiser_and_the_log(tmp_path):
    trainer, _ = _train(tmp_path, steps=8, lr_schedule="cosine")
    logged = [line["lr"] for line in _log(tmp_path) if line["split"] == "train"]
    assert logged == [learning_rate(trainer.config.training, step) for step in (2, 4, 6, 8)]
    with pytest.raises(CheckpointError, match=r"training\.lr_schedule differ"):
        Trainer(_model(), _toy_loss, _data(12, seed=1), _config(8), tmp_path, mesh_fingerprint="mesh-1")


def test_log_lines_have_the_expected_keys(tmp_path):
    _, summary = _train(tmp_path, steps=4)
    lines = _log(tmp_path)
    train = [line for line in lines if line["split"] == "train"]
    val = [line for line in lines if line["split"] == "val"]
    assert [line["step"] for line in train] == [2, 4] and [line["step"] for line in val] == [2, 4]
    for line in train:
        assert set(line) == {"split", "step", "loss", "components", "lr", "grad_norm", "seconds_per_step"}
        assert set(line["components"]) == {"data", "residual"} and line["lr"] == 1e-2
    for line in val:
        assert set(line) == {"split", "step", "loss", "components", "ema_loss", "ema_components", "seconds"}
    assert summary.val_components == {"loss": val[-1]["loss"], **val[-1]["components"]}
    assert summary.seconds_per_step > 0


def test_validation_is_repeatable_and_leaves_training_state_alone(tmp_path):
    trainer, _ = _train(tmp_path, steps=2)
    generator_state, torch_state = trainer.generator.get_state(), torch.get_rng_state()
    first, again = trainer.evaluate(_data(7, seed=2)), trainer.evaluate(_data(7, seed=2))
    assert first == again
    assert torch.equal(trainer.generator.get_state(), generator_state)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(p.requires_grad for p in trainer.model.parameters()) and trainer.model.training


def _diverging_loss(kind: str, at_step: int):
    calls = {"n": 0}

    def loss_fn(model, batch, generator):
        calls["n"] += 1
        loss, components = _toy_loss(model, batch, generator)
        if calls["n"] == at_step and kind == "loss":
            return loss * float("nan"), {**components, "residual": float("nan")}
        if calls["n"] == at_step and kind == "gradient":
            return loss + torch.sqrt(0.0 * model[0].weight.sum()), components  # finite loss, NaN gradient
        return loss, components

    return loss_fn


@pytest.mark.parametrize("kind, message", [("loss", "loss is nan"), ("gradient", "gradient norm is nan")])
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path, kind, message):
    trainer = Trainer(
        _model(), _diverging_loss(kind, at_step=5), _data(12, seed=1), _config(8), tmp_path, progress=False
    )
    with pytest.raises(TrainingDiverged) as info:
        trainer.train()
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"training diverged at step 5: {message} (components: data=")
    assert text.endswith(f"last good checkpoint {tmp_path / 'last.pt'} (step 4)")
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved.step == 4
    assert all(torch.isfinite(v).all() for v in saved.model.values())
    assert all(torch.isfinite(v).all() for v in saved.ema["shadow"].values())


def test_resume_refuses_another_mesh_or_configuration(tmp_path):
    _train(tmp_path, steps=2)
    with pytest.raises(CheckpointError, match="made on another mesh"):
        Trainer(_model(), _toy_loss, _data(12, seed=1), _config(4), tmp_path, mesh_fingerprint="mesh-2")
    with pytest.raises(CheckpointError, match=r"made with another configuration \(training\.lr differ\)"):
        Trainer(_model(), _toy_loss, _data(12, seed=1), _config(4, lr=0.1), tmp_path, mesh_fingerprint="mesh-1")


def test_resume_ignores_only_the_keys_that_the_method_never_reads(tmp_path):
    ddpm = {"method": "ddpm", "c_residual": 1e-3, "residual": "strong"}
    _train(tmp_path, steps=2, diffusion=ddpm)
    other_physics = dict(ddpm, c_residual=1.0, residual="preconditioned")
    trainer = Trainer(_model(), _toy_loss, _data(12, seed=1), _config(4, diffusion=other_physics), tmp_path,
                      mesh_fingerprint="mesh-1")
    assert trainer.step == 2
    with pytest.raises(CheckpointError, match=r"diffusion\.T differ"):
        Trainer(_model(), _toy_loss, _data(12, seed=1), _config(4, diffusion=dict(ddpm, T=50)), tmp_path,
                mesh_fingerprint="mesh-1")


def test_trained_configuration_keeps_what_shapes_the_weights():
    def trained(**diffusion):
        return trained_configuration(config_to_dict(config_from_dict({"diffusion": diffusion})))

    assert trained(method="ddpm", c_residual=1e-3) == trained(method="ddpm", c_residual=1.0, residual="weak")
    assert trained(method="ddpm") != trained(method="ddpm", prediction="x0")
    assert trained(method="pidm", c_residual=1e-3) != trained(method="pidm", c_residual=1.0)
    assert trained(method="pidm", residual="strong") != trained(method="pidm", residual="preconditioned")
    assert trained(method="pidm", cond_dropout=0.1) == trained(method="pidm", cond_dropout=0.2)
    guided = trained(method="physics_guided", residual="strong")
    assert guided != trained(method="physics_guided", residual="weak")  # the residual is its condition
    assert guided == trained(method="physics_guided", residual="strong", c_residual=5.0)
    assert "c_residual" in config_to_dict(config_from_dict({"diffusion": {"method": "ddpm"}}))["diffusion"]


def test_checkpoint_from_before_a_new_key_resumes_with_its_default(tmp_path):
    _train(tmp_path, steps=2)
    stored = torch.load(tmp_path / "last.pt", weights_only=True)
    del stored["config"]["diffusion"]["representation"]  # as written before the key existed
    torch.save(stored, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt").config == config_to_dict(_config(2))
    trainer = Trainer(_model(), _toy_loss, _data(12, seed=1), _config(4), tmp_path, mesh_fingerprint="mesh-1")
    assert trainer.step == 2


def test_trainer_rejects_bad_data(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size \(5\) exceeds the number of training rows \(3\)"):
        Trainer(_model(), _toy_loss, _data(3, seed=1), _config(2), tmp_path)
    bad = {"x": torch.zeros(6, 4), "y": torch.zeros(5, 1)}
    with pytest.raises(ValueError, match="same number of rows"):
        Trainer(_model(), _toy_loss, bad, _config(2), tmp_path)


class _Counter:
    """Training state outside the model: counts the steps it saw."""

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state) -> None:
        self.count = state["count"]


def test_trainer_state_is_checkpointed_and_required_on_resume(tmp_path):
    def train(run_dir, steps, state):
        def loss(model, batch, generator):
            state.get("counter", _Counter()).count += 1
            return _toy_loss(model, batch, generator)

        return Trainer(_model(), loss, _data(12, seed=1), _config(steps), run_dir, state=state, progress=False)

    counter = _Counter()
    train(tmp_path / "run", 4, {"counter": counter}).train()
    assert load_checkpoint(tmp_path / "run" / "last.pt").extra["state.counter"] == {"count": 4}
    restored = _Counter()
    assert train(tmp_path / "run", 6, {"counter": restored}).step == 4 and restored.count == 4
    train(tmp_path / "plain", 2, {}).train()
    with pytest.raises(CheckpointError, match="holds no training state 'counter'"):
        train(tmp_path / "plain", 4, {"counter": _Counter()})
