"""Pure torch models: no I/O, no configuration parsing."""

from models.unet import HEADS, MultitaskUNet, TwoHeadOutputs, UNetConfig

__all__ = ["HEADS", "MultitaskUNet", "TwoHeadOutputs", "UNetConfig"]
