"""The campaign service's operations, one part per resource, each in its own module; each
write is one tenant transaction with its audit record (services.campaign.operations)."""

from __future__ import annotations

from services.campaign.deals import DealOps
from services.campaign.matchmaking import MatchOps
from services.campaign.orders import OrderOps
from services.campaign.pacing_reports import PacingOps
from services.campaign.placements import PlacementOps
from services.campaign.sponsors import SponsorOps


class AdOps(SponsorOps, OrderOps, PlacementOps, PacingOps, MatchOps, DealOps):
    """What the servicer calls: every part over one set of collaborators, so a write in
    any part drops the pacing answers the pacing part keeps."""
