"""What each campaign RPC requires of its caller."""

from __future__ import annotations

from services.shared.auth import MethodRule, Permission

SERVICE = "podmesh.campaign.v1.CampaignService"

_READ = Permission.CAMPAIGN_READ
_WRITE = Permission.CAMPAIGN_WRITE
_BY_METHOD: dict[str, MethodRule] = {
    "CreateSponsor": _WRITE,
    "GetSponsor": _READ,
    "ListSponsors": _READ,
    "UpdateSponsor": _WRITE,
    "DeleteSponsor": _WRITE,
    "CreateCampaign": _WRITE,
    "GetCampaign": _READ,
    "ListCampaigns": _READ,
    "UpdateCampaign": _WRITE,
    "DeleteCampaign": _WRITE,
    "CreateLineItem": _WRITE,
    "GetLineItem": _READ,
    "ListLineItems": _READ,
    "UpdateLineItem": _WRITE,
    "DeleteLineItem": _WRITE,
    "CreatePlacement": _WRITE,
    "GetPlacement": _READ,
    "ListPlacements": _READ,
    "ListSlotPlacements": Permission.PLATFORM_ADMIN,
    "BatchGetLineItems": Permission.PLATFORM_ADMIN,
    "UpdatePlacement": _WRITE,
    "DeletePlacement": _WRITE,
    "BookPlacement": _WRITE,
    "GetPacing": _READ,
    "MatchPodcasts": _READ,
    "CreateDeal": _WRITE,
    "GetDeal": _READ,
    "ListDeals": _READ,
    "UpdateDeal": _WRITE,
    "DeleteDeal": _WRITE,
    "TransitionDeal": _WRITE,
    "ListDealEvents": _READ,
}
RULES = {f"/{SERVICE}/{method}": rule for method, rule in _BY_METHOD.items()}
