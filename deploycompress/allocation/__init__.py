"""Allocation policies: how many channels each group keeps. Registered by name (`--policy`)."""
from .base import AllocationPolicy, AllocationProblem, AllocationResult, SpeedupMeter, policies
from . import searched  # noqa: F401 - registers uniform and global

policies.register_lazy("spdy", "deploycompress.allocation.spdy:SPDY")
policies.register_lazy("sap", "deploycompress.allocation.sap:SAP")

__all__ = ["AllocationPolicy", "AllocationProblem", "AllocationResult", "SpeedupMeter", "policies"]
