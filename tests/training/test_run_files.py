"""locate_run: which paths hold a run's checkpoint (no training needed)."""

from __future__ import annotations

import pytest

from mscvision.training.run_files import NoCheckpointError, locate_run


def test_only_a_ckpt_file_is_taken_as_a_checkpoint(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "best.ckpt").write_bytes(b"")
    config = tmp_path / "run" / "config.yaml"
    config.write_text("name: x\n")
    assert locate_run(checkpoints / "best.ckpt").run_dir == tmp_path / "run"
    with pytest.raises(NoCheckpointError, match=r"config\.yaml: no checkpoint there .*not a \.ckpt file"):
        locate_run(config)  # used to be returned as the checkpoint, then failed in torch.load
    with pytest.raises(NoCheckpointError, match="no checkpoint there"):
        locate_run(checkpoints / "best.ckpt", resume=True)  # resume needs the run directory
