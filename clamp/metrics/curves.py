"""Model-level curves from logits and a batch: loss per context position, in-context learning score, accuracy.

Loss by position is what shows in-context learning (Olsson et al. 2022): a model that uses its
context predicts later tokens better than earlier ones, and the drop appears with induction heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["accuracy", "accuracy_by_position", "in_context_learning_score", "loss_by_position"]


def _scored(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 3 or logits.shape[:2] != targets.shape or targets.shape != loss_mask.shape:
        raise ValueError(
            f"expected logits [B, T, V], targets and loss_mask [B, T]; got {tuple(logits.shape)}, "
            f"{tuple(targets.shape)}, {tuple(loss_mask.shape)}"
        )
    mask = loss_mask.to(logits.device).bool()
    # unscored targets may hold anything (e.g. -1): make them a valid index, they are masked out anyway
    tgt = torch.where(mask, targets.to(logits.device).long(), torch.zeros((), dtype=torch.long, device=logits.device))
    return tgt, mask


def loss_by_position(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy at each position ``[T]``: over the batch entries with ``loss_mask``; NaN where none.

    Computed in float32 without gradients; unscored targets are never read.
    """
    with torch.no_grad():
        tgt, mask = _scored(logits, targets, loss_mask)
        ce = F.cross_entropy(logits.detach().float().transpose(1, 2), tgt, reduction="none")  # [B, T]
        ce = torch.where(mask, ce, torch.zeros((), device=ce.device))
        return ce.sum(0) / mask.sum(0).float()  # 0/0 -> NaN


def in_context_learning_score(loss_by_pos: torch.Tensor, early: int, late: int) -> torch.Tensor:
    """Olsson et al. ICL score: ``loss_by_pos[late] - loss_by_pos[early]`` (0-dim tensor).

    Negative means the model predicts better later in the context, i.e. it learns in context.
    Olsson et al. use tokens 500 and 50; any valid indices (negative ones count from the end) work.
    """
    lp = torch.as_tensor(loss_by_pos)
    t = lp.shape[-1]
    for name, idx in (("early", early), ("late", late)):
        if not -t <= idx < t:
            raise IndexError(f"in_context_learning_score: {name}={idx} outside a curve of length {t}")
    return lp[..., late] - lp[..., early]


def accuracy(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Fraction of scored entries (``loss_mask``) where ``argmax(logits) == target`` (0-dim tensor; NaN if none)."""
    with torch.no_grad():
        tgt, mask = _scored(logits, targets, loss_mask)
        correct = (logits.argmax(-1) == tgt) & mask
        return correct.sum().float() / mask.sum().float()


def accuracy_by_position(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Accuracy at each position ``[T]`` over scored batch entries; NaN where none."""
    with torch.no_grad():
        tgt, mask = _scored(logits, targets, loss_mask)
        correct = (logits.argmax(-1) == tgt) & mask
        return correct.sum(0).float() / mask.sum(0).float()
