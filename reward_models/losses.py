"""The Bradley-Terry losses a reward ensemble is fitted with: one teacher who answers at random
with a fixed probability (:func:`bradley_terry_loss`), or per-label error rates, weights and
temperatures from the reliability model (:func:`rater_bradley_terry_loss`)."""

from __future__ import annotations

import math

import torch


def bradley_terry_loss(
    returns_left: torch.Tensor,
    returns_right: torch.Tensor,
    target: torch.Tensor,
    random_response: float,
) -> torch.Tensor:
    """Cross entropy between the soft target and the noisy Bradley-Terry preference probability.

    ``p = (1 - rr) * sigmoid(R_right - R_left) + rr / 2`` is the probability that the teacher picks
    right; the loss is ``-(t log p + (1 - t) log(1 - p))`` averaged over pairs and members. Computed
    in log space (``logaddexp`` of log-sigmoids), so huge return differences give finite losses
    and gradients.

    Args:
        returns_left, returns_right: ``(M, N)`` segment returns.
        target: ``(N,)`` (or ``(M, N)``) in [0, 1]: 0 left better, 1 right better, 0.5 equal.
        random_response: ``rr`` in [0, 1).

    Returns:
        A scalar tensor.
    """
    if not 0 <= random_response < 1:
        raise ValueError(f"random_response must be in [0, 1), got {random_response}")
    diff = returns_right - returns_left
    target = target.to(diff.dtype)
    log_sig_right = torch.nn.functional.logsigmoid(diff)
    log_sig_left = torch.nn.functional.logsigmoid(-diff)
    if random_response > 0:
        log_keep = math.log1p(-random_response)
        log_random = torch.tensor(math.log(random_response / 2), dtype=diff.dtype, device=diff.device)
        log_p_right = torch.logaddexp(log_sig_right + log_keep, log_random)
        log_p_left = torch.logaddexp(log_sig_left + log_keep, log_random)
    else:
        log_p_right, log_p_left = log_sig_right, log_sig_left
    loss = -(target * log_p_right + (1 - target) * log_p_left)
    return loss.mean()


def rater_bradley_terry_loss(
    returns_left: torch.Tensor,
    returns_right: torch.Tensor,
    target: torch.Tensor,
    error_rate: torch.Tensor,
    weight: torch.Tensor,
    temperature: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted cross entropy under per-label mistake rates and temperatures (the reliability
    model's M-step).

    ``p = (1 - e) * sigmoid(b * D) + e * (1 - sigmoid(b * D))``, ``D = R_right - R_left``, is the
    probability that the label's rater answers right when they err with probability ``e`` and
    tell returns apart at temperature ``b`` (1 when ``temperature`` is None); the loss
    is ``sum(w * CE(t, p)) / sum(w)`` over labels, averaged over members, in log space. ``e = 0.5``
    gives a label zero gradient; ``e = rr / 2`` and ``w = 1`` is :func:`bradley_terry_loss`.

    Args:
        returns_left, returns_right: ``(M, N)`` segment returns.
        target, error_rate, weight, temperature: ``(N,)`` or ``(M, N)``; ``error_rate`` in
            [0, 0.5], ``weight >= 0``, ``temperature > 0``.

    Returns:
        A scalar tensor (0 when every weight is 0).
    """
    diff = returns_right - returns_left
    if temperature is not None:
        diff = diff * temperature.to(diff.dtype)
    target = target.to(diff.dtype)
    error = error_rate.to(diff.dtype)
    log_keep, log_mistake = torch.log1p(-error), torch.log(error)  # log(0) = -inf: logaddexp drops it
    log_sig_right = torch.nn.functional.logsigmoid(diff)
    log_sig_left = torch.nn.functional.logsigmoid(-diff)
    log_p_right = torch.logaddexp(log_sig_right + log_keep, log_sig_left + log_mistake)
    log_p_left = torch.logaddexp(log_sig_left + log_keep, log_sig_right + log_mistake)
    loss = -(target * log_p_right + (1 - target) * log_p_left)
    w = weight.to(diff.dtype).expand_as(loss)
    return (loss * w).sum() / w.sum().clamp_min(1e-12)
