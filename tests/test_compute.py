"""The `compute` settings (src/genlab/compute.py): their logic checked on CPU, where no GPU is available. bf16 autocast
runs on CPU too, so the mixed-precision path is exercised for real; fused Adam and TF32 are CUDA settings whose
selection is checked; torch.compile is checked in a slow test (inductor compiles C++ on CPU: minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genlab.compute import adam, autocast, compiled, configure, layout, resolve_precision
from genlab.config import ComputeConfig, EvaluatorConfig, GANConfig, LDMConfig, VAEConfig
from genlab.device import describe
from genlab.distributed import World
from genlab.models.vae import VAE
from genlab.paths import Paths
from genlab.randomness import batch_indices, generator
from genlab.stages.common import Context
from genlab.stages.diffusion_training import build_step
from genlab.stages.train_vae import vae_step

CPU = torch.device("cpu")
CFG = LDMConfig(base_channels=16, channel_mults=[1, 2], attention_levels=[1], conditioning="class", batch_size=16)


def small_ldm_run(compute: ComputeConfig, steps: int = 2, world: World | None = None):  # noqa: ANN201
    """A small class-conditional latent U-Net trained `steps` steps on global batches of 16 with the stage's own
    builder, in one process or as `world`'s rank (tests/test_distributed.py)."""
    g0 = torch.Generator().manual_seed(0)
    x_all, labels = torch.randn(64, 4, 8, 8, generator=g0), torch.arange(64) % 10
    ctx = Context(paths=Paths(Path("/nonexistent")), seed=0, device=CPU, world=world or World(),
                  compute=compute)  # nothing is written
    run = build_step("train_ldm", CFG, ctx, [4, 8, 8], 10, "digits", [], lambda idx, g: x_all[idx], labels)
    losses = []
    for k in range(steps):
        losses.append(run.step(batch_indices(0, k, 64, 16), generator(0, "test", k))["loss"])
        run.trainable.step += 1
    return run, losses


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_fp32_weights() -> None:
    run32, loss32 = small_ldm_run(ComputeConfig())
    seen = []
    run16, _ = small_ldm_run(ComputeConfig(precision="bf16"), steps=0)
    conv = next(m for m in run16.unet.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses = []
    for k in range(2):
        losses.append(run16.step(batch_indices(0, k, 64, 16), generator(0, "test", k))["loss"])
        run16.trainable.step += 1
    assert set(seen) == {torch.bfloat16}  # convolutions under autocast
    assert all(p.dtype == torch.float32 for p in run16.unet.parameters())  # master weights
    state = run16.trainable.optimizers["opt"].state
    assert all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    # the same draws: the bf16 losses track the fp32 ones to bf16 precision, but are not the same numbers
    for a, b in zip(losses, loss32, strict=True):
        assert a.dtype == torch.float32 and torch.isfinite(a)
        assert a.item() == pytest.approx(b.item(), rel=0.05) and a.item() != b.item()


def test_fp32_and_tf32_leave_cpu_training_bit_identical() -> None:
    """On CPU tf32 changes nothing (a CUDA setting), and autocast is off: the same bits as fp32."""
    (a, _), (b, _) = small_ldm_run(ComputeConfig()), small_ldm_run(ComputeConfig(precision="tf32"))
    configure(CPU, ComputeConfig(precision="tf32"))
    for p, q in zip(a.unet.parameters(), b.unet.parameters(), strict=True):
        assert torch.equal(p, q)


def test_memory_format_auto_is_channels_last_on_cuda_and_contiguous_on_cpu() -> None:
    cuda = torch.device("cuda")  # a device object needs no GPU: the resolution is what is checked
    assert layout(cuda, ComputeConfig()) == "channels_last" and layout(CPU, ComputeConfig()) == "contiguous"
    for fmt in ("channels_last", "contiguous"):
        assert layout(CPU, ComputeConfig(memory_format=fmt)) == layout(cuda, ComputeConfig(memory_format=fmt)) == fmt


def nhwc(t: torch.Tensor) -> bool:
    """Stored channels_last and not also plain contiguous (a 3x3 kernel or a feature map with H, W > 1)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_channels_last_training_matches_contiguous_and_writes_contiguous_snapshots(tmp_path: Path) -> None:
    """`compute.memory_format: channels_last`: the U-Net's 3x3 weights (and the EMA's, and Adam's moments) are
    NHWC, its convolutions return NHWC activations, and two steps give the contiguous run's losses (and the first
    its gradients) to float tolerance (other kernels, other rounding). The snapshot is written contiguous and loads
    back equal."""
    from safetensors.torch import load_file

    from genlab.checkpoint import save_snapshot

    ref, loss_ref = small_ldm_run(ComputeConfig())
    run, _ = small_ldm_run(ComputeConfig(memory_format="channels_last"), steps=0)
    name, conv = next((n, m) for n, m in run.unet.named_modules()
                      if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    seen = []
    conv.register_forward_hook(lambda m, i, o: seen.append(nhwc(o)))
    losses, grads = [], []
    for k in range(2):
        losses.append(run.step(batch_indices(0, k, 64, 16), generator(0, "test", k))["loss"])
        run.trainable.step += 1
        grads = grads or [p.grad.clone() for p in run.unet.parameters()]  # the first step's: from the same weights
    ref_grads = [p.grad for p in small_ldm_run(ComputeConfig(), steps=1)[0].unet.parameters()]
    assert seen and all(seen)
    assert nhwc(conv.weight) and not nhwc(ref.unet.get_submodule(name).weight)
    assert nhwc(run.ema.get_submodule(name).weight)
    assert nhwc(run.trainable.optimizers["opt"].state[conv.weight]["exp_avg"])
    for a, b in zip(losses, loss_ref, strict=True):
        assert a.item() == pytest.approx(b.item(), rel=1e-4, abs=1e-6)
    # the first step's gradients (after it, Adam's division by sqrt(v) turns rounding in a near-zero gradient into
    # a step of up to lr: the weights are compared through the losses and gradients they give)
    scale = max(g.abs().max().item() for g in ref_grads)  # a bias before a GroupNorm has a zero gradient: noise
    for (param, _), a, b in zip(run.unet.named_parameters(), grads, ref_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * scale), param
    save_snapshot(run.unet, tmp_path / "model.safetensors")
    saved = load_file(str(tmp_path / "model.safetensors"))
    state = run.unet.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)


def test_every_training_builder_places_its_networks_in_the_training_layout() -> None:
    """The evaluator's, the VAE's and the GAN's builders (the U-Net's: above) put every 3x3 weight NHWC under
    channels_last and take a step in it."""
    from genlab.stages import train_evaluator, train_gan, train_vae

    ctx = Context(paths=Paths(Path("/nonexistent")), seed=0, device=CPU,
                  compute=ComputeConfig(memory_format="channels_last"))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(128, 1, 16, 16, generator=g) * 2 - 1, torch.arange(128) % 10
    ev, vae, gan = EvaluatorConfig(batch_size=32), VAEConfig(batch_size=32), GANConfig(batch_size=32)
    built = {"evaluator": train_evaluator.build_step(ev, ctx, 1, [10], x, y[:, None]),
             "vae": train_vae.build_step(vae, ctx, train_vae.vae_network(vae, 1, 16), x, plain=False),
             "gan": train_gan.build_step(gan, ctx, 1, 16, 10, x, y)}
    for name, b in built.items():
        kernels = [m.weight for mod in b.trainable.modules.values() for m in mod.modules()
                   if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d) and m.kernel_size == (3, 3)
                   and min(m.weight.shape[:2]) > 1]  # with one channel NHWC and NCHW are the same strides
        assert kernels and all(nhwc(w) for w in kernels), name
        losses = b.step(batch_indices(0, 0, 128, 32), generator(0, "test", 0))
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in losses.values()), name


def test_vae_step_runs_its_forward_in_the_given_context() -> None:
    torch.manual_seed(0)
    vae = VAE(in_channels=1, base_channels=8, latent_channels=4, downsample=1)
    opt = adam(vae.parameters(), CPU, lr=1e-3)
    x_all = torch.rand(32, 1, 16, 16) * 2 - 1
    seen = []
    conv = next(m for m in vae.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    entered = []

    def amp():  # noqa: ANN202
        entered.append(1)
        return autocast(CPU, ComputeConfig(precision="bf16"))

    out = vae_step(vae, opt, x_all, torch.arange(16), torch.randn(16, 4, 8, 8), 1.0, 0.1, micro=8, device=CPU,
                   amp=amp)
    assert len(entered) == 2  # once per micro-batch
    assert torch.isfinite(out["loss"]) and all(p.dtype == torch.float32 for p in vae.parameters())
    assert seen == [torch.bfloat16] * 2


def test_adam_is_fused_and_takes_the_reference_steps() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert adam(params, torch.device("cuda"), lr=1e-3).defaults["fused"] is True
    decoupled = adam(params, torch.device("cuda"), decoupled=True, lr=1e-3, weight_decay=0.0)
    assert isinstance(decoupled, torch.optim.AdamW) and decoupled.defaults["fused"] is True
    # on CPU too, and its steps are torch's per-parameter AdamW's to float rounding
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 7, generator=g), torch.randn(7, generator=g)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(4)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    ref = [torch.nn.Parameter(t.clone()) for t in start]
    opt = adam(ours, CPU, decoupled=True, lr=1e-2, weight_decay=0.1)
    assert opt.defaults["fused"] is True
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in grads:
        for o, r, gr in zip(ours, ref, step, strict=True):
            o.grad, r.grad = gr.clone(), gr.clone()
        opt.step()
        ref_opt.step()
    for o, r, t in zip(ours, ref, start, strict=True):
        assert not torch.equal(o, t)  # it moved
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-7)


def test_autocast_is_off_unless_bf16() -> None:
    for precision in ("fp32", "tf32"):
        with autocast(CPU, ComputeConfig(precision=precision)):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(CPU, ComputeConfig(precision="bf16")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_describe_names_the_cpu_its_cores_and_its_vector_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stage run and bench result records the machine: timings on an AVX2 EPYC and an AMX Xeon differ ~1.6x."""
    caps = {"cpu_name": "AMD EPYC", "num_logical_cores": 2, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert describe(CPU) == "AMD EPYC (2 cores, AVX2)"
    caps.update(cpu_name="Intel(R) Xeon(R) Platinum 8488C", amx_bf16=True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert describe(CPU) == "Intel(R) Xeon(R) Platinum 8488C (2 cores, AVX512, AMX-BF16)"
    caps.update(cpu_name="AMD EPYC", amx_bf16=False, avx512_bf16=True)
    assert describe(CPU) == "AMD EPYC (2 cores, AVX512, AVX512-BF16)"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert describe(torch.device("cuda")) == "NVIDIA H200"


def test_auto_precision_is_bf16_only_where_the_device_has_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto`: bf16 on a CPU with AMX-BF16 or AVX512-BF16 and on a CUDA GPU with native bf16, fp32 elsewhere (a
    CPU with neither: autocast would emulate it, slower than fp32); the other settings pass through."""
    auto = ComputeConfig(precision="auto", threads=3)
    caps = {"amx_bf16": True, "avx512_bf16": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert resolve_precision(CPU, auto) == ComputeConfig(precision="bf16", threads=3)
    with autocast(CPU, auto):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    caps["amx_bf16"] = False  # Zen 4 and later: AVX512-BF16 without AMX
    assert resolve_precision(CPU, auto) == ComputeConfig(precision="bf16", threads=3)
    caps["avx512_bf16"] = False
    assert resolve_precision(CPU, auto) == ComputeConfig(precision="fp32", threads=3)
    with autocast(CPU, auto):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    cuda = torch.device("cuda")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n)
        assert resolve_precision(cuda, auto).precision == expected
    for precision in ("fp32", "tf32", "bf16"):
        assert resolve_precision(CPU, ComputeConfig(precision=precision)).precision == precision


def test_compute_settings_are_part_of_a_runs_identity(tmp_path) -> None:  # noqa: ANN001
    """A checkpoint written under other compute settings is not resumed (its fingerprint differs); the defaults add
    nothing, so runs at the defaults keep their fingerprints."""
    from genlab.paths import Paths
    from genlab.stages.common import fingerprint

    base = Context(paths=Paths(tmp_path), seed=0, device=CPU)
    assert base.fingerprint("train_ldm", CFG, "h") == fingerprint("train_ldm", CFG, 0, "h")
    fps = {Context(paths=Paths(tmp_path), seed=0, device=CPU, compute=ComputeConfig(**c)).fingerprint(
        "train_ldm", CFG, "h") for c in ({}, {"precision": "bf16"}, {"precision": "tf32"}, {"compile": True})}
    assert len(fps) == 4
    assert compiled(torch.nn.Linear(2, 2), ComputeConfig()).__class__ is torch.nn.Linear


def test_a_training_section_sets_its_own_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`vae.precision: bf16` runs `train_vae` under bf16 and leaves every other stage at `compute.precision`
    (fp32): what `genlab <stage>` hands each stage's `run`. `gan.precision: auto` reaches `train_gan` resolved
    (bf16 on a CPU with AMX)."""
    import importlib
    import types

    import yaml

    from genlab import cli
    from genlab.config import load_params

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["vae"]["precision"], params["gan"]["precision"] = "bf16", "auto"
    params["compute"]["precision"] = "fp32"
    params["ldm"]["precision"] = params["evaluator"]["precision"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    seen: dict[str, ComputeConfig] = {}
    real = importlib.import_module

    def fake(name: str) -> object:  # the stage modules: record the compute settings `run` gets
        if not name.startswith("genlab.stages."):
            return real(name)
        return types.SimpleNamespace(run=lambda *args: seen.setdefault(name.rsplit(".", 1)[1], args[-1].compute))

    monkeypatch.setattr(cli.importlib, "import_module", fake)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    for stage in ("train_vae", "train_ldm", "train_evaluator", "reference_stats", "train_gan"):
        cli.run_stage(stage, tmp_path / "params.yaml", tmp_path)
    assert seen["train_vae"] == seen["train_gan"] == ComputeConfig(precision="bf16")  # the stage gets auto resolved
    assert seen["train_ldm"] == seen["train_evaluator"] == seen["reference_stats"] == ComputeConfig()
    loaded = load_params(tmp_path / "params.yaml")
    assert loaded.compute_for("vae").precision == "bf16" and loaded.compute_for("ldm") is loaded.compute
    assert loaded.compute_for("gan").precision == "auto"  # resolved by the stage, not by the params file


@pytest.mark.slow
def test_compiled_training_step_matches_eager() -> None:
    """compute.compile: the stage's step through torch.compile (inductor, C++ on CPU) gives the eager losses and
    weights to float tolerance.

    Except where the gradient is zero in exact arithmetic: a conv bias whose output a GroupNorm re-centres (one
    channel a group at these widths), the attention's key bias (softmax is shift-invariant), the embedding rows of
    classes not in the batch. There both gradients are rounding noise (about 1e-10 against an rms of 2e-3; measured
    on a 2-core AVX2 EPYC, where inductor's kernels round differently from eager's and the noise differs in sign),
    and Adam's m/sqrt(v) turns any noise into a step of full size, so those weights differ by chance. Those entries
    are checked to be noise in both runs; every other weight must match."""
    eager, loss_e = small_ldm_run(ComputeConfig())
    comp, loss_c = small_ldm_run(ComputeConfig(compile=True))
    for a, b in zip(loss_e, loss_c, strict=True):
        assert a.item() == pytest.approx(b.item(), rel=1e-4, abs=1e-6)
    scale = torch.cat([p.grad.flatten() for p in eager.unet.parameters()]).pow(2).mean().sqrt()
    noisy = {}  # parameter name -> how many of its entries had a zero-but-for-rounding gradient in the last step
    for (name, p), q in zip(eager.unet.named_parameters(), comp.unet.parameters(), strict=True):
        noise = p.grad.abs() < 1e-5 * scale
        if noise.any():
            assert (q.grad[noise].abs() < 1e-4 * scale).all(), name  # noise in the compiled run too
            noisy[name] = int(noise.sum())
        keep = ~noise
        ge, gc = p.grad[keep], q.grad[keep]
        assert (ge - gc).norm() <= 1e-3 * ge.norm(), name  # per tensor: single entries can cancel
        assert torch.allclose(p[keep], q[keep], rtol=1e-3, atol=1e-5), name
    total = sum(p.numel() for p in eager.unet.parameters())
    assert sum(noisy.values()) < 0.01 * total, noisy


@pytest.mark.slow  # 108 s; test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_fp32_weights is the fast check
def test_every_training_stage_runs_under_bf16_autocast(tmp_path) -> None:  # noqa: ANN001
    """`compute.precision: bf16` end to end on CPU: each training stage (evaluator, VAE with its autoencoder, LDM,
    GAN with R1's double backward; the pixel U-Net shares the LDM's step builder) trains, writes its snapshot in
    float32 and records the setting."""
    import json

    import mlflow
    from safetensors.torch import load_file

    from tests.conftest import make_project, sh, tiny_params

    params = tiny_params()
    params["compute"] = {"precision": "bf16", "compile": False}
    for section, n in (("evaluator", 1024), ("vae", 512), ("ldm", 256), ("gan", 256)):
        # null: the stage takes compute.precision (the VAE's and GAN's default `auto` is fp32 on a CPU without bf16
        # units, an AVX2 EPYC say, which would leave those two stages untested here)
        params[section].update(train_images=n, log_every_images=128, precision=None)
    params["vae"].update(ae_train_images=128, kl_warmup_images=128)
    params["ldm"].update(fid_every_images=10**9, nll_timesteps=1)
    params["gan"].update(fid_every_images=256, fid_samples=20)  # the cheap FID reads the evaluator's features
    root, env = make_project(tmp_path, params)
    for stage in ("prepare", "train_evaluator", "train_vae", "train_ldm", "train_gan"):
        sh(["genlab", stage], root, env)
    for name in ("evaluator", "vae", "ldm", "gan"):
        weights = load_file(str(root / "models" / name / "model.safetensors"))
        floats = [t for t in weights.values() if t.is_floating_point()]
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in floats), name
    gan = json.loads((root / "metrics" / "train_gan.json").read_text())
    assert all(abs(gan[k]) < 1e3 for k in ("final_loss_d", "final_loss_g"))  # finite: NaN fails the comparison
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["genlab"], output_format="list")
    assert {r.data.params["compute.precision"] for r in runs if r.info.run_name.startswith("train_")} == {"bf16"}


def test_training_images_move_to_the_gpu_only_when_they_fit(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    """On CUDA a split becomes device-resident when it takes at most RESIDENT_FRACTION of the free memory."""
    from genlab.data import store

    images = store.Images(tmp_path / "unused.safetensors", 0, (1000, 3, 64, 64))  # 12.3 MB, never read here
    monkeypatch.setattr(store, "ResidentImages", lambda imgs, device: ("resident", imgs, device))
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 12_288_000, 10**11))
    assert store.training_images(images, cuda) == ("resident", images, cuda)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 12_288_000 - 1, 10**11))
    assert store.training_images(images, cuda) is images
    assert store.training_images(images, CPU) is images


def test_threads_param_sets_torchs_cpu_threads_and_changes_a_runs_identity() -> None:
    before = torch.get_num_threads()
    try:
        configure(CPU, ComputeConfig(threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert ComputeConfig(threads=1).fingerprint_extra() != ComputeConfig().fingerprint_extra() == ()
    with pytest.raises(ValueError):
        ComputeConfig(threads=0)


def _stat(path: Path, busy: int, idle: int) -> None:
    # /proc/stat's first line: cpu user nice system idle iowait irq softirq steal guest guest_nice
    path.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")


def test_busy_cores_is_the_machines_non_idle_share_times_its_cores(tmp_path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                                    ) -> None:
    import os

    from genlab import cpu_wait

    stat = tmp_path / "stat"
    _stat(stat, 1000, 1000)
    # during the interval: 300 busy and 100 idle ticks, so 3/4 of every core busy
    monkeypatch.setattr(cpu_wait.time, "sleep", lambda s: _stat(stat, 1300, 1100))
    assert cpu_wait.busy_cores(0.0, stat) == pytest.approx(0.75 * (os.cpu_count() or 1))
    assert cpu_wait.busy_cores(0.0, tmp_path / "missing") is None


def test_a_busy_machine_gets_the_passive_wait_policy_unless_the_user_chose_one() -> None:
    from genlab.cpu_wait import choose_wait_policy

    env: dict[str, str] = {}
    assert choose_wait_policy(env, busy=0.1, torch_loaded=False) == "default" and env == {}
    assert choose_wait_policy(env, busy=0.9, torch_loaded=False) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert choose_wait_policy({"OMP_WAIT_POLICY": "ACTIVE"}, busy=1.9, torch_loaded=False) == "ACTIVE"
    late: dict[str, str] = {}  # torch already loaded libgomp: setting the variable would change nothing
    assert choose_wait_policy(late, busy=1.9, torch_loaded=True) == "default" and late == {}


def test_the_cli_does_not_import_torch_before_choosing_the_wait_policy() -> None:
    import subprocess
    import sys

    code = "import sys, genlab.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
