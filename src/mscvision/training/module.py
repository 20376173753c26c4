"""The LightningModule: masked multi-task loss, AdamW with warmup + cosine, per-task validation metrics."""

from __future__ import annotations

import copy
import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from mscvision.core.metrics import classification_metrics
from mscvision.core.tasks import IGNORE_INDEX, Task
from mscvision.training.config import RunConfig, from_dict
from mscvision.training.distributed import gather_in_order, sum_over_ranks
from mscvision.training.models import MultiTaskNet, build_backbone

MONITOR = "val/balanced_accuracy"  # mean over tasks: what early stopping and "best" follow


class MscClassifier(L.LightningModule):
    """Holds its whole config (``hparams``), so a checkpoint rebuilds the model and its preprocessing.

    Takes a ``RunConfig`` and ``Task``s; the checkpoint keeps their plain-dict forms (what the
    weights-only loader accepts, see ``run_files``), which ``load_from_checkpoint`` passes back in.
    """

    def __init__(self, config: RunConfig | dict, tasks: list[Task] | list[dict],
                 class_weights: dict[str, list[float]] | None = None, channels_last: bool = False):
        super().__init__()
        self.config: RunConfig = config if isinstance(config, RunConfig) else from_dict(RunConfig, config, "")
        self.tasks = [t if isinstance(t, Task) else Task.from_dict(t) for t in tasks]
        self.save_hyperparameters({"config": self.config.to_dict(), "tasks": [t.to_dict() for t in self.tasks],
                                   "class_weights": class_weights, "channels_last": channels_last})
        model_cfg = self.config.model
        backbone = build_backbone(model_cfg.backbone, self.config.preprocess.in_channels,
                                   model_cfg.stem_stride, model_cfg.pretrained)
        self.net = MultiTaskNet(backbone, {t.name: t.num_classes for t in self.tasks}, model_cfg.dropout)
        for task in self.tasks:
            weights = (class_weights or {}).get(task.name)
            self.register_buffer(f"class_weight_{task.name}",
                                 torch.tensor(weights, dtype=torch.float32) if weights else None,
                                 persistent=False)
        self.use_channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.ema_net = None
        if self.config.optim.ema_decay > 0:
            self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        self._val_outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._val_loss: list[tuple[float, int]] = []  # (batch loss x batch size, batch size)

    @property
    def eval_net(self) -> torch.nn.Module:
        """The weights that are evaluated, checkpointed as best and exported: the EMA when kept."""
        return self.ema_net if self.ema_net is not None else self.net

    def forward(self, x: torch.Tensor):
        if self.use_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self.net if self.training else self.eval_net)(x)

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema_net is None:
            return
        # timm-style warm-up: early on the average follows the weights closely
        step = self.global_step
        decay = min(self.config.optim.ema_decay, (1 + step) / (10 + step))
        for ema, live in zip(self.ema_net.parameters(), self.net.parameters()):
            ema.lerp_(live.detach(), 1.0 - decay)
        for ema, live in zip(self.ema_net.buffers(), self.net.buffers()):
            ema.copy_(live)

    def multitask_loss(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of per-task cross-entropies; samples with an unknown label for a task are masked out."""
        total = sum(value.sum() * 0.0 for value in logits.values())  # keeps the graph when all masked
        for task in self.tasks:
            y = targets[task.name]
            known = y != IGNORE_INDEX
            if known.any():
                total = total + F.cross_entropy(
                    logits[task.name][known].float(), y[known],
                    weight=getattr(self, f"class_weight_{task.name}"),
                    label_smoothing=self.config.optim.label_smoothing)
        return total

    def training_step(self, batch, batch_idx):
        x, targets = batch
        alpha = self.config.augment.mixup_alpha if self.config.augment.enabled else 0.0
        if alpha > 0:
            loss = self.mixup_loss(x, targets, alpha)
        else:
            _, logits = self(x)
            loss = self.multitask_loss(logits, targets)
        # sync_dist: on W processes the mean over the ranks' equal batches, the global batch's loss
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x), sync_dist=True)
        return loss

    def mixup_loss(self, x: torch.Tensor, targets: dict[str, torch.Tensor], alpha: float) -> torch.Tensor:
        """Mixup (Zhang et al. 2018): train on ``lam*x + (1-lam)*x[perm]`` against both label sets.

        Mixup rather than CutMix: crops are centred on one cell, so a pasted patch carries a
        neighbour's fragment, not a share of its label proportional to the patch's area.
        """
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(x), device=x.device)
        _, logits = self(lam * x + (1.0 - lam) * x[perm])
        mixed = {name: y[perm] for name, y in targets.items()}
        return lam * self.multitask_loss(logits, targets) + (1.0 - lam) * self.multitask_loss(logits, mixed)

    def validation_step(self, batch, batch_idx):
        x, targets = batch
        _, logits = self(x)
        self._val_loss.append((float(self.multitask_loss(logits, targets)) * len(x), len(x)))  # exact mean later
        for task in self.tasks:
            pred = logits[task.name].argmax(dim=1)
            self._val_outputs.setdefault(task.name, []).append((targets[task.name].cpu(), pred.cpu()))

    def on_validation_epoch_end(self) -> None:
        """Figures over exactly the val images, once each: on W processes each rank scored its share
        (training/distributed.py), and the shares are gathered before anything is computed."""
        local = {task.name: (torch.cat([p[0] for p in pairs]).numpy(), torch.cat([p[1] for p in pairs]).numpy())
                 for task in self.tasks if (pairs := self._val_outputs.get(task.name))}
        outputs = gather_in_order(local)
        loss_sum, images = sum_over_ranks(np.sum(self._val_loss, axis=0) if self._val_loss else np.zeros(2))
        self._val_outputs.clear()
        self._val_loss.clear()
        if images:
            self._log_same_on_every_rank("val/loss", loss_sum / images)
            self._log_same_on_every_rank("val/images", float(images))
        scores = []
        for task in self.tasks:
            if task.name not in outputs:
                continue
            y, pred = outputs[task.name]
            figures = classification_metrics(y, pred, task.classes)
            self._log_same_on_every_rank(f"val/{task.name}/balanced_accuracy", figures["balanced_accuracy"])
            self._log_same_on_every_rank(f"val/{task.name}/macro_f1", figures["macro_f1"])
            scores.append(figures["balanced_accuracy"])
        if scores:
            self._log_same_on_every_rank(MONITOR, float(np.mean(scores)), prog_bar=True)

    def _log_same_on_every_rank(self, name: str, value: float, prog_bar: bool = False) -> None:
        # every rank computed this value from the same gathered outputs: a max over the ranks is that
        # value, exactly (a mean could round), and tells Lightning it is synced
        self.log(name, value, prog_bar=prog_bar, sync_dist=True, reduce_fx="max")

    def on_train_start(self) -> None:
        """Resumed on another number of processes (steps per epoch changed): continue the schedule
        at the start of the restored epoch, not at the restored step count."""
        scheduler = self.lr_schedulers()
        position = self.trainer.current_epoch * self.trainer.num_training_batches
        if scheduler is not None and scheduler.last_epoch != position:
            scheduler.last_epoch = position - 1
            scheduler.step()  # sets every group's lr for ``position``: LambdaLR computes it from the step alone

    def configure_optimizers(self):
        cfg = self.config.optim
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:  # the EMA copy
                continue
            (no_decay if param.ndim <= 1 else decay).append(param)  # no decay on norms and biases
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * cfg.warmup_epochs / max(1, self.trainer.max_epochs))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to 0 at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
