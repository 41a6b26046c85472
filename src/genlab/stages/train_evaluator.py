"""Stage `train_evaluator`: the classifier whose features define offline FID and class accuracy."""

from __future__ import annotations

import torch

from genlab.config import EvaluatorConfig
from genlab.models.evaluator import Evaluator, attribute_loss, random_shift
from genlab.paths import staged_dir
from genlab.randomness import seeded
from genlab.stages.common import Context, fingerprint, finish_training, load_data, logger, save_training, stage_run
from genlab.training import Trainable, optimizer_step, train

STAGE = "train_evaluator"


@torch.no_grad()
def accuracy(model: Evaluator, images: torch.Tensor, attributes: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Per-attribute accuracy (A,)."""
    model.eval()
    pred = torch.cat([model.predict(images[i : i + 512].to(device)).cpu() for i in range(0, len(images), 512)])
    return (pred == attributes).float().mean(0)


def run(cfg: EvaluatorConfig, ctx: Context) -> dict:
    data = load_data(ctx)
    c, s = data.manifest["image_shape"][0], data.manifest["image_shape"][1]
    attrs = data.manifest["attributes"]
    network = {"in_channels": c, "num_classes": attrs["num_classes"], "width": cfg.width}
    with seeded(ctx.seed, STAGE, "init"):
        model = Evaluator(**network).to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    trainable = Trainable({"model": model}, {"opt": opt})
    x_all, y_all = data.train.images, data.train.attributes

    def step(idx: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        model.train()
        x = random_shift(x_all[idx], g).to(ctx.device)
        loss = attribute_loss(model, model(x), y_all[idx].to(ctx.device))
        optimizer_step(model, opt, loss, loss_name="loss", module_name="evaluator")
        return {"loss": loss.item()}

    fp = fingerprint(STAGE, cfg, ctx.seed, data.hash)
    ckpt = ctx.paths.checkpoint(STAGE)
    with stage_run(ctx, STAGE, cfg, data.hash, resume=((ckpt, fp),)) as mlrun:
        train(STAGE, cfg, trainable, step, seed=ctx.seed, n_train=len(data.train),
              ckpt=ckpt, fingerprint=fp, on_log=logger(mlrun), run_id=mlrun.run_id)
        val = accuracy(model, data.val.images, data.val.attributes, ctx.device)
        test = accuracy(model, data.test.images, data.test.attributes, ctx.device)
        metrics = {"val_accuracy": float(val.mean()), "test_accuracy": float(test.mean()),
                   **{f"test_accuracy_{n}": float(a) for n, a in zip(attrs["names"], test, strict=True)}}
        out_dir = ctx.paths.model("evaluator")
        with staged_dir(out_dir) as out:
            snapshot_cfg = {"network": network, "image_size": s, "attribute_names": attrs["names"]}
            history = save_training(out, STAGE, cfg, trainable, model, snapshot_cfg, fp)
        finish_training(ctx, STAGE, mlrun, out_dir, history, metrics, trainable)
    return metrics
