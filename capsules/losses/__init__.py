"""The papers' losses: margin loss and reconstruction loss (Sabour et al. 2017), spread loss (Hinton et al. 2018),
and the likelihood losses later routing papers train with (negative log-likelihood, cross-entropy on logits)."""

from capsules.losses.activation_likelihood import logit_cross_entropy, nll_loss
from capsules.losses.margin import margin_loss
from capsules.losses.reconstruction import reconstruction_loss
from capsules.losses.spread import SpreadMarginSchedule, spread_loss

__all__ = ["SpreadMarginSchedule", "logit_cross_entropy", "margin_loss", "nll_loss", "reconstruction_loss",
           "spread_loss"]
