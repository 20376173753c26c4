"""Fine-tuning: start from an mscvision run's weights; heads whose classes differ start fresh."""

from __future__ import annotations

from pathlib import Path

from mscvision.core.errors import ConfigError
from mscvision.training.run_files import load_checkpoint, locate_run


def init_from_run(module, source: str | Path) -> list[str]:
    """Copy the source's evaluated weights (EMA when kept) into ``module``; returns what was done."""
    ckpt = load_checkpoint(locate_run(source, setting="model.init_from").checkpoint)  # weights only: not this run's own
    hparams = ckpt["hyper_parameters"]
    prefix = "ema_net." if hparams["config"]["optim"].get("ema_decay", 0) > 0 else "net."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    source_classes = {t["name"]: list(t["classes"]) for t in hparams["tasks"]}
    messages = [f"fine-tuning from {source}"]
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    own = module.net.state_dict()
    mismatched = [k for k, v in backbone.items() if k not in own or own[k].shape != v.shape]
    if mismatched:
        raise ConfigError(f"model.init_from: the source backbone does not fit this model ({mismatched[:3]}). "
                          "Fix: use the same model.backbone, stem_stride and input channels.")
    load = dict(backbone)
    for task in module.tasks:
        if source_classes.get(task.name) == list(task.classes):
            load.update({k: v for k, v in state.items() if k.startswith(f"heads.{task.name}.")})
            messages.append(f"  head {task.name!r}: kept (same classes)")
        else:
            messages.append(f"  head {task.name!r}: new (classes differ from the source)")
    module.net.load_state_dict(load, strict=False)
    if module.ema_net is not None:
        module.ema_net.load_state_dict(module.net.state_dict())
    return messages
