"""Stage `train_evaluator`: the network whose features define offline FID. On labelled data a classifier of the
data's attributes (its accuracy on samples is the class accuracy); on unlabelled data a self-supervised one that
predicts which of 4 rotations was applied to an image (Gidaris et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genlab.compute import adam, autocast
from genlab.config import EvaluatorConfig
from genlab.data.splits import ROTATIONS, evaluator_task
from genlab.data.store import Batches, training_images
from genlab.device import inference_batch
from genlab.models.evaluator import Evaluator, attribute_loss, random_noise, random_shift, rotate, stem_stride_for
from genlab.paths import staged_dir
from genlab.randomness import seeded
from genlab.stages.common import Context, finish_training, load_data, logger, save_training, stage_run
from genlab.stages.train_fid import write_train_reference
from genlab.training import Losses, Trainable, optimizer_step, train

STAGE = "train_evaluator"


@torch.no_grad()
def accuracy(model: Evaluator, images: torch.Tensor, attributes: torch.Tensor | None,
             device: torch.device) -> torch.Tensor:
    """Per-head accuracy (A,); attributes None: the rotation task, every image under each of the 4 rotations."""
    model.eval()
    hits, b = [], inference_batch(images.shape[-1])
    for i in range(0, len(images), b):
        x = images[i : i + b].to(device)
        if attributes is None:
            k = torch.arange(len(ROTATIONS)).repeat_interleave(len(x))
            hits.append(model.predict(rotate(x.repeat(len(ROTATIONS), 1, 1, 1), k)).cpu() == k[:, None])
        else:
            hits.append(model.predict(x).cpu() == attributes[i : i + b])
    return torch.cat(hits).float().mean(0)


@dataclass
class EvaluatorStep:
    """What evaluator training steps: the network's arguments, the model with its optimizer (in `trainable`) and
    `step(idx, g)`, one update on the global batch `idx`."""

    network: dict
    trainable: Trainable
    step: Callable[[torch.Tensor, torch.Generator], Losses]


def build_step(cfg: EvaluatorConfig, ctx: Context, channels: int, heads: list[int], x_all: Batches,
               y_all: torch.Tensor | None) -> EvaluatorStep:
    """The one builder of the evaluator's training step (the stage, under DDP too, and the benches): the network
    (its stem's stride following the images' side) initialised from (ctx.seed, STAGE), Adam, random shifts (and
    pixel noise with `cfg.noise_std`), and either the attribute heads' cross-entropy on `y_all` or, with `y_all`
    None, the rotation task (Gidaris et al. 2018); `ctx.compute`'s settings."""
    network = {"in_channels": channels, "num_classes": heads, "width": cfg.width,
               "stem_stride": stem_stride_for(x_all.shape[-1])}
    with seeded(ctx.seed, STAGE, "init"):
        model = ctx.place(Evaluator(**network))
    opt = adam(model.parameters(), ctx.device, lr=cfg.lr)
    trainable = Trainable({"model": model}, {"opt": opt})
    net = ctx.train_net(model)

    def step(idx: torch.Tensor, g: torch.Generator) -> Losses:
        model.train()
        x = random_shift(x_all[idx], g)  # drawn for the global batch; this rank computes on `rows` of it
        if cfg.noise_std > 0:  # 0: no draw, so the bits of an evaluator trained without noise stay as they were
            x = random_noise(x, g, cfg.noise_std)
        if y_all is None:  # the target is the rotation drawn for each image
            k = torch.randint(0, len(ROTATIONS), (len(idx),), generator=g)
            x, y = rotate(x, k), k[:, None]
        else:
            y = y_all[idx]
        rows = ctx.world.rows(len(idx))
        with autocast(ctx.device, ctx.compute):
            loss = attribute_loss(model, net(x[rows].to(ctx.device)), y[rows].to(ctx.device))
        optimizer_step(model, opt, loss, loss_name="loss", module_name="evaluator", check=trainable.check)
        return {"loss": loss.detach()}

    return EvaluatorStep(network, trainable, step)


def run(cfg: EvaluatorConfig, ctx: Context) -> dict:
    data = load_data(ctx)
    c, s = data.manifest["image_shape"][0], data.manifest["image_shape"][1]
    names, heads = evaluator_task(data.manifest)
    rotation = not data.manifest["attributes"]["names"]
    built = build_step(cfg, ctx, c, heads, training_images(data.train.images, ctx.device),
                       None if rotation else data.train.attributes)
    network, trainable, step = built.network, built.trainable, built.step
    model = trainable.modules["model"]

    fp = ctx.fingerprint(STAGE, cfg, data.hash)
    ckpt = ctx.paths.checkpoint(STAGE)
    with stage_run(ctx, STAGE, cfg, data.hash, resume=((ckpt, fp),)) as mlrun:
        train(STAGE, cfg, trainable, step, seed=ctx.seed, n_train=len(data.train),
              ckpt=ckpt, fingerprint=fp, on_log=logger(mlrun), run_id=mlrun.run_id, world=ctx.world)
        if not ctx.world.main:
            return {}
        val = accuracy(model, data.val.images, None if rotation else data.val.attributes, ctx.device)
        test = accuracy(model, data.test.images, None if rotation else data.test.attributes, ctx.device)
        metrics = {"task": "rotation" if rotation else "attributes", "val_accuracy": float(val.mean()),
                   "test_accuracy": float(test.mean()),
                   **{f"test_accuracy_{n}": float(a) for n, a in zip(names, test, strict=True)}}
        out_dir = ctx.paths.model("evaluator")
        with staged_dir(out_dir) as out:
            snapshot_cfg = {"network": network, "image_size": s, "attribute_names": names,
                            "task": metrics["task"]}
            history = save_training(out, STAGE, cfg, trainable, model, snapshot_cfg, fp)
            write_train_reference(out, ctx, data)
        finish_training(ctx, STAGE, mlrun, out_dir, history, metrics, trainable)
    return metrics
