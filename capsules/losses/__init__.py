"""The papers' losses: margin loss and reconstruction loss (Sabour et al. 2017), spread loss (Hinton et al. 2018)."""

from capsules.losses.margin import margin_loss
from capsules.losses.reconstruction import reconstruction_loss
from capsules.losses.spread import SpreadMarginSchedule, spread_loss

__all__ = ["SpreadMarginSchedule", "margin_loss", "reconstruction_loss", "spread_loss"]
