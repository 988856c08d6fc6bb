"""A deleted `save_last: link` target is reported as a broken link, not as a missing last.ckpt (issue 18.9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clamp.runs import find_checkpoint


def test_a_broken_last_link_names_the_link_and_its_target(tmp_path: Path) -> None:
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step=500.ckpt").write_bytes(b"x")
    (ckpts / "last.ckpt").symlink_to("step=1000.ckpt")  # its target was deleted
    with pytest.raises(FileNotFoundError, match=r"last.ckpt' is a broken link to 'step=1000.ckpt', which no longer exists"):
        find_checkpoint(tmp_path / "run")
    (ckpts / "last.ckpt").unlink()
    (ckpts / "last.ckpt").symlink_to("step=500.ckpt")
    assert find_checkpoint(tmp_path / "run").resolve() == (ckpts / "step=500.ckpt").resolve()
