"""Paper planning of training and SGEAT runs: memory, FLOPs, bubble, communication, time."""

from megatron_detox.plan.estimate import TrainingPlan, plan_training
from megatron_detox.plan.hardware import GPUS, Device, get_device
from megatron_detox.plan.layout import Layout, validate_layout

__all__ = ["GPUS", "Device", "Layout", "TrainingPlan", "get_device", "plan_training", "validate_layout"]
