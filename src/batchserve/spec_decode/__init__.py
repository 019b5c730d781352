"""Speculative decoding: proposers guess the next tokens, one target forward pass verifies them all.

Torch-free apart from `rejection_sampler` (the verification, used by the executor) so the scheduler
and the simulator can import the configuration and the `Speculator`.
"""

from .config import SpeculativeConfig
from .ngram import NgramProposer
from .proposer import Proposer
from .speculator import Speculator

__all__ = ["NgramProposer", "Proposer", "SpeculativeConfig", "Speculator"]
