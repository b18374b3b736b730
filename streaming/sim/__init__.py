"""Synthetic traffic where no data set covers the case: a seeded simulator of listening sessions.

=============  ==============================================================================
module         holds
=============  ==============================================================================
``simulator``  ``Simulator``: users, tracks, requests, logged slates and plays, with the true
               expected reward of every candidate (so regret and policy values are exact)
``traffic``    the simulator's requests, slates and plays as encore's wire events
=============  ==============================================================================
"""

from streaming.sim.simulator import SimConfig, Simulator, describe
from streaming.sim.traffic import EventTimeRelease, impressions, outcomes, wire

__all__ = [
    "EventTimeRelease",
    "SimConfig",
    "Simulator",
    "describe",
    "impressions",
    "outcomes",
    "wire",
]
