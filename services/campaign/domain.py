"""Ad operations without gRPC: sponsors, campaigns, line items, placements and deals,
their validation, their state machines and money."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Mapping, Set
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TypeVar

from services.shared.errors import FailedPrecondition, InvalidArgument
from services.shared.money import is_currency_code
from services.shared.validation import Violations, is_email

# Money and counts are bounded well inside int64, so that sums over a campaign's line
# items and the products behind spend can never overflow what the contract carries.
MAX_MINOR_UNITS = 10**15
MAX_IMPRESSIONS = 10**12
MAX_NAME = 200
MAX_TEXT = 5000
MAX_LIST = 100
DEFAULT_PRIORITY = 5
# Stands for "not assigned yet" in ids the service fills in.
NIL = uuid.UUID(int=0)
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
S = TypeVar("S", bound=enum.IntEnum)
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class CampaignState(enum.IntEnum):
    """Values are podmesh.campaign.v1.CampaignState (and LineItemState)."""

    DRAFT = 1
    ACTIVE = 2
    PAUSED = 3
    COMPLETED = 4
    CANCELLED = 5


class PlacementState(enum.IntEnum):
    PROPOSED = 1
    BOOKED = 2
    LIVE = 3
    COMPLETED = 4
    CANCELLED = 5


class AdType(enum.IntEnum):
    DYNAMIC = 1
    BAKED_IN = 2
    HOST_READ = 3


class PricingModel(enum.IntEnum):
    CPM = 1
    FLAT = 2
    CPA = 3


class PacingStrategy(enum.IntEnum):
    ASAP = 1
    EVEN = 2
    FRONT_LOADED = 3


class AdPosition(enum.IntEnum):
    """Values are podmesh.catalog.v1.AdPosition."""

    UNSPECIFIED = 0
    PRE_ROLL = 1
    MID_ROLL = 2
    POST_ROLL = 3


class DealStage(enum.IntEnum):
    PROSPECT = 1
    PROPOSAL = 2
    HOLD = 3
    BOOKED = 4
    LIVE = 5
    DELIVERED = 6
    RECONCILED = 7
    INVOICED = 8
    PAID = 9
    MAKEGOOD = 10
    LOST = 11


# The changes a caller may make (CampaignState's comment; line items the same).
# Completion is the clock's: the sweep completes active and paused ones.
CAMPAIGN_TRANSITIONS: Mapping[CampaignState, frozenset[CampaignState]] = {
    CampaignState.DRAFT: frozenset({CampaignState.ACTIVE, CampaignState.CANCELLED}),
    CampaignState.ACTIVE: frozenset({CampaignState.PAUSED, CampaignState.CANCELLED}),
    CampaignState.PAUSED: frozenset({CampaignState.ACTIVE, CampaignState.CANCELLED}),
    CampaignState.COMPLETED: frozenset(),
    CampaignState.CANCELLED: frozenset(),
}
LINE_ITEM_TRANSITIONS = CAMPAIGN_TRANSITIONS

# DealStage's comment, edge by edge.
DEAL_TRANSITIONS: Mapping[DealStage, frozenset[DealStage]] = {
    DealStage.PROSPECT: frozenset({DealStage.PROPOSAL, DealStage.LOST}),
    DealStage.PROPOSAL: frozenset(
        {DealStage.HOLD, DealStage.BOOKED, DealStage.PROSPECT, DealStage.LOST}
    ),
    DealStage.HOLD: frozenset({DealStage.BOOKED, DealStage.PROPOSAL, DealStage.LOST}),
    DealStage.BOOKED: frozenset({DealStage.LIVE, DealStage.LOST}),
    DealStage.LIVE: frozenset({DealStage.DELIVERED}),
    DealStage.DELIVERED: frozenset({DealStage.RECONCILED, DealStage.MAKEGOOD}),
    DealStage.RECONCILED: frozenset({DealStage.INVOICED, DealStage.MAKEGOOD}),
    DealStage.MAKEGOOD: frozenset({DealStage.LIVE}),
    DealStage.INVOICED: frozenset({DealStage.PAID}),
    DealStage.PAID: frozenset(),
    DealStage.LOST: frozenset(),
}
DELETABLE_DEAL_STAGES = frozenset({DealStage.PROSPECT, DealStage.PROPOSAL, DealStage.LOST})


def state_name(state: enum.IntEnum) -> str:
    return state.name.lower()


def check_transition(
    kind: str,
    current: S,
    requested: S,
    allowed: Mapping[S, Set[S]],
    field_name: str = "state",
) -> None:
    """FAILED_PRECONDITION naming both states unless `allowed` has the edge."""
    if requested in allowed[current]:
        return
    raise FailedPrecondition(
        f"a {kind} cannot go from {state_name(current)} to {state_name(requested)}",
        reason=f"{kind.upper().replace(' ', '_')}_{field_name.upper()}_CHANGE_NOT_ALLOWED",
        metadata={
            f"current_{field_name}": state_name(current),
            f"requested_{field_name}": state_name(requested),
        },
    )


# Money


@dataclass(frozen=True)
class Money:
    currency_code: str
    minor_units: int


def check_money(
    value: Money | None,
    name: str,
    v: Violations,
    *,
    required: bool = True,
    currency: str | None = None,
) -> None:
    if value is None:
        v.check(not required, name, "is required")
        return
    if not is_currency_code(value.currency_code):
        v.add(f"{name}.currency_code", "must be an ISO 4217 code in upper case, e.g. USD")
    elif currency is not None and value.currency_code != currency:
        v.add(f"{name}.currency_code", f"must be the campaign's currency, {currency}")
    if value.minor_units < 0:
        v.add(f"{name}.minor_units", "must not be negative")
    elif value.minor_units > MAX_MINOR_UNITS:
        v.add(f"{name}.minor_units", f"must be at most {MAX_MINOR_UNITS}")


def round_half_even(numerator: int, denominator: int) -> int:
    return int((Decimal(numerator) / Decimal(denominator)).quantize(0, ROUND_HALF_EVEN))


# Resources


@dataclass(frozen=True)
class Sponsor:
    id: uuid.UUID
    display_name: str
    domain: str = ""
    iab_categories: tuple[str, ...] = ()
    competitive_category: str = ""
    contact_name: str = ""
    contact_email: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None


SPONSOR_UPDATABLE = frozenset(
    {
        "display_name",
        "domain",
        "iab_categories",
        "competitive_category",
        "contact_name",
        "contact_email",
    }
)


def competitive_key(category: str) -> str:
    return category.strip().lower()


def validate_sponsor(sponsor: Sponsor, prefix: str = "sponsor") -> Sponsor:
    sponsor = replace(
        sponsor,
        display_name=sponsor.display_name.strip(),
        domain=sponsor.domain.strip().lower(),
        iab_categories=tuple(dict.fromkeys(c.strip() for c in sponsor.iab_categories)),
        competitive_category=" ".join(sponsor.competitive_category.split()),
        contact_name=sponsor.contact_name.strip(),
        contact_email=sponsor.contact_email.strip().lower(),
    )
    v = Violations()
    _check_name(sponsor.display_name, f"{prefix}.display_name", v)
    if sponsor.domain:
        v.check(
            bool(_DOMAIN_RE.fullmatch(sponsor.domain)),
            f"{prefix}.domain",
            "must be a domain name such as example.com",
        )
    v.check(len(sponsor.iab_categories) <= MAX_LIST, f"{prefix}.iab_categories", "too many")
    v.check(
        all(0 < len(c) <= 20 for c in sponsor.iab_categories),
        f"{prefix}.iab_categories",
        "must be non-empty IAB content taxonomy ids",
    )
    v.check(
        len(sponsor.competitive_category) <= MAX_NAME,
        f"{prefix}.competitive_category",
        f"at most {MAX_NAME} characters",
    )
    v.check(len(sponsor.contact_name) <= MAX_NAME, f"{prefix}.contact_name", "too long")
    if sponsor.contact_email:
        v.check(is_email(sponsor.contact_email), f"{prefix}.contact_email", "must be an email")
    v.raise_if_any()
    return sponsor


def _check_name(value: str, name: str, v: Violations) -> None:
    if v.check(bool(value), name, "is required"):
        v.check(len(value) <= MAX_NAME, name, f"at most {MAX_NAME} characters")


def _check_flight(start: datetime | None, end: datetime | None, prefix: str, v: Violations) -> bool:
    ok = v.check(start is not None, f"{prefix}.flight_start_time", "is required")
    ok = v.check(end is not None, f"{prefix}.flight_end_time", "is required") and ok
    if ok and start is not None and end is not None:
        ok = v.check(end > start, f"{prefix}.flight_end_time", "must be after flight_start_time")
    return ok


@dataclass(frozen=True)
class Campaign:
    id: uuid.UUID
    sponsor_id: uuid.UUID
    display_name: str
    budget: Money | None
    flight_start: datetime | None
    flight_end: datetime | None
    state: CampaignState = CampaignState.DRAFT
    attribution_window_days: int = 0
    attribution_model: int = 0
    external_order_number: str = ""
    notes: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def currency(self) -> str:
        assert self.budget is not None
        return self.budget.currency_code


CAMPAIGN_UPDATABLE = frozenset(
    {
        "display_name",
        "state",
        "budget",
        "flight_start_time",
        "flight_end_time",
        "attribution_window_days",
        "attribution_model",
        "external_order_number",
        "notes",
    }
)
ATTRIBUTION_MODELS = range(0, 8)


def validate_campaign(campaign: Campaign, prefix: str = "campaign") -> Campaign:
    campaign = replace(
        campaign,
        display_name=campaign.display_name.strip(),
        external_order_number=campaign.external_order_number.strip(),
    )
    v = Violations()
    _check_name(campaign.display_name, f"{prefix}.display_name", v)
    check_money(campaign.budget, f"{prefix}.budget", v)
    _check_flight(campaign.flight_start, campaign.flight_end, prefix, v)
    v.check(
        0 <= campaign.attribution_window_days <= 90,
        f"{prefix}.attribution_window_days",
        "must be 1 to 90 (0 for the tenant's default)",
    )
    v.check(
        campaign.attribution_model in ATTRIBUTION_MODELS,
        f"{prefix}.attribution_model",
        f"has no value {campaign.attribution_model}",
    )
    v.check(
        len(campaign.external_order_number) <= MAX_NAME,
        f"{prefix}.external_order_number",
        "too long",
    )
    v.check(len(campaign.notes) <= MAX_TEXT, f"{prefix}.notes", f"at most {MAX_TEXT} characters")
    v.raise_if_any()
    return campaign


@dataclass(frozen=True)
class Targeting:
    podcast_ids: tuple[uuid.UUID, ...] = ()
    episode_ids: tuple[uuid.UUID, ...] = ()
    categories: tuple[str, ...] = ()
    country_codes: tuple[str, ...] = ()
    positions: tuple[AdPosition, ...] = ()
    excluded_podcast_ids: tuple[uuid.UUID, ...] = ()
    exclude_explicit: bool = False


@dataclass(frozen=True)
class LineItem:
    id: uuid.UUID
    campaign_id: uuid.UUID
    display_name: str
    ad_type: AdType | None
    pricing_model: PricingModel | None
    rate: Money | None
    state: CampaignState = CampaignState.DRAFT
    impression_goal: int = 0
    impression_cap: int = 0
    pacing_strategy: PacingStrategy = PacingStrategy.EVEN
    priority: int = DEFAULT_PRIORITY
    flight_start: datetime | None = None
    flight_end: datetime | None = None
    targeting: Targeting = field(default_factory=Targeting)
    frequency_cap_max: int = 0
    frequency_cap_days: int = 0
    promo_code: str = ""
    vanity_url: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None


LINE_ITEM_UPDATABLE = frozenset(
    {
        "display_name",
        "state",
        "rate",
        "impression_goal",
        "impression_cap",
        "pacing_strategy",
        "priority",
        "flight_start_time",
        "flight_end_time",
        "targeting",
        "targeting.podcast_ids",
        "targeting.episode_ids",
        "targeting.categories",
        "targeting.country_codes",
        "targeting.positions",
        "targeting.excluded_podcast_ids",
        "targeting.exclude_explicit",
        "frequency_cap",
        "promo_code",
        "vanity_url",
    }
)


def validate_line_item(item: LineItem, campaign: Campaign, prefix: str = "line_item") -> LineItem:
    """Checks a line item against itself and its campaign; flights default to the
    campaign's."""
    item = replace(
        item,
        display_name=item.display_name.strip(),
        flight_start=item.flight_start or campaign.flight_start,
        flight_end=item.flight_end or campaign.flight_end,
        priority=item.priority or DEFAULT_PRIORITY,
        promo_code=item.promo_code.strip(),
        vanity_url=item.vanity_url.strip(),
        targeting=replace(
            item.targeting,
            categories=tuple(dict.fromkeys(c.strip() for c in item.targeting.categories if c)),
            country_codes=tuple(
                dict.fromkeys(c.strip().upper() for c in item.targeting.country_codes)
            ),
        ),
    )
    v = Violations()
    _check_name(item.display_name, f"{prefix}.display_name", v)
    v.check(item.ad_type is not None, f"{prefix}.ad_type", "is required")
    v.check(item.pricing_model is not None, f"{prefix}.pricing_model", "is required")
    check_money(item.rate, f"{prefix}.rate", v, currency=campaign.currency)
    for name, value in (
        ("impression_goal", item.impression_goal),
        ("impression_cap", item.impression_cap),
    ):
        if v.check(value >= 0, f"{prefix}.{name}", "must not be negative"):
            v.check(
                value <= MAX_IMPRESSIONS, f"{prefix}.{name}", f"must be at most {MAX_IMPRESSIONS}"
            )
    if item.impression_cap and item.impression_goal:
        v.check(
            item.impression_cap >= item.impression_goal,
            f"{prefix}.impression_cap",
            "must not be below impression_goal",
        )
    v.check(1 <= item.priority <= 10, f"{prefix}.priority", "must be 1 to 10")
    if _check_flight(item.flight_start, item.flight_end, prefix, v):
        assert item.flight_start
        assert item.flight_end
        assert campaign.flight_start
        assert campaign.flight_end
        v.check(
            item.flight_start >= campaign.flight_start and item.flight_end <= campaign.flight_end,
            f"{prefix}.flight_start_time",
            "the flight must lie within the campaign's flight "
            f"({campaign.flight_start.isoformat()} to {campaign.flight_end.isoformat()})",
        )
    if item.rate is not None and item.pricing_model is PricingModel.CPM:
        v.check(
            committed_cost(item.pricing_model, item.rate.minor_units, item.impression_goal)
            <= MAX_MINOR_UNITS,
            f"{prefix}.rate",
            "impression_goal x rate ÷ 1,000 overflows the largest amount of money",
        )
    t = item.targeting
    for name, values in (
        ("podcast_ids", t.podcast_ids),
        ("episode_ids", t.episode_ids),
        ("categories", t.categories),
        ("country_codes", t.country_codes),
        ("positions", t.positions),
        ("excluded_podcast_ids", t.excluded_podcast_ids),
    ):
        v.check(len(values) <= MAX_LIST, f"{prefix}.targeting.{name}", f"at most {MAX_LIST}")
    v.check(
        all(_COUNTRY_RE.fullmatch(c) for c in t.country_codes),
        f"{prefix}.targeting.country_codes",
        "must be ISO 3166-1 alpha-2 codes",
    )
    v.check(
        AdPosition.UNSPECIFIED not in t.positions,
        f"{prefix}.targeting.positions",
        "must name positions",
    )
    v.check(
        not set(t.podcast_ids) & set(t.excluded_podcast_ids),
        f"{prefix}.targeting.excluded_podcast_ids",
        "must not also be targeted",
    )
    if t.country_codes:
        v.check(
            item.ad_type is AdType.DYNAMIC,
            f"{prefix}.targeting.country_codes",
            "only dynamic ads can be targeted by country",
        )
    cap_max, cap_days = item.frequency_cap_max, item.frequency_cap_days
    v.check(cap_max >= 0 and cap_days >= 0, f"{prefix}.frequency_cap", "must not be negative")
    v.check(
        (cap_max == 0) == (cap_days == 0),
        f"{prefix}.frequency_cap",
        "needs both max_impressions and period_days, or neither",
    )
    if cap_max:
        v.check(
            item.ad_type is AdType.DYNAMIC,
            f"{prefix}.frequency_cap",
            "only dynamic ads can be frequency capped",
        )
    v.check(len(item.promo_code) <= MAX_NAME, f"{prefix}.promo_code", "too long")
    v.check(len(item.vanity_url) <= 2000, f"{prefix}.vanity_url", "too long")
    v.raise_if_any()
    return item


def committed_cost(pricing: PricingModel, rate_minor: int, impressions: int) -> int:
    """What a booking commits of the budget: CPM impressions at the rate, or the flat fee;
    CPA commits nothing until purchases are attributed."""
    if pricing is PricingModel.CPM:
        return round_half_even(impressions * rate_minor, 1000)
    if pricing is PricingModel.FLAT:
        return rate_minor
    return 0


# Placements


@dataclass(frozen=True)
class Placement:
    id: uuid.UUID
    line_item_id: uuid.UUID
    episode_id: uuid.UUID
    campaign_id: uuid.UUID = NIL
    podcast_id: uuid.UUID = NIL
    ad_slot_id: uuid.UUID | None = None
    position: AdPosition = AdPosition.UNSPECIFIED
    start_byte: int = 0
    end_byte: int = 0
    state: PlacementState = PlacementState.PROPOSED
    impression_goal: int = 0
    flight_start: datetime | None = None
    flight_end: datetime | None = None
    makegood_for_line_item_id: uuid.UUID | None = None
    episode_publish_at: datetime | None = None
    book_time: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


PLACEMENT_UPDATABLE = frozenset({"impression_goal", "ad_slot_id", "position"})


def check_placement_goal(goal: int, name: str) -> None:
    v = Violations()
    if v.check(goal >= 0, name, "must not be negative"):
        v.check(goal <= MAX_IMPRESSIONS, name, f"must be at most {MAX_IMPRESSIONS}")
    v.raise_if_any()


@dataclass(frozen=True)
class Slot:
    id: uuid.UUID
    position: AdPosition
    start_byte: int
    end_byte: int


@dataclass(frozen=True)
class EpisodeFacts:
    """What booking needs of a catalog episode and its podcast."""

    id: uuid.UUID
    podcast_id: uuid.UUID
    publish_at: datetime | None
    explicit: bool
    podcast_explicit: bool
    podcast_categories: tuple[str, ...]
    slots: tuple[Slot, ...]


def targeting_refusal(item: LineItem, episode: EpisodeFacts) -> str | None:
    """Why the line item's targeting excludes the episode, None when it does not."""
    t = item.targeting
    if episode.podcast_id in t.excluded_podcast_ids:
        return "the line item excludes this podcast"
    if t.exclude_explicit and (episode.explicit or episode.podcast_explicit):
        return "the episode is explicit and the line item excludes explicit content"
    if t.podcast_ids and episode.podcast_id not in t.podcast_ids:
        return "the podcast is not among the line item's targeted podcasts"
    if t.episode_ids and episode.id not in t.episode_ids:
        return "the episode is not among the line item's targeted episodes"
    if t.categories and not _categories_match(t.categories, episode.podcast_categories):
        return (
            f"the podcast's categories ({', '.join(episode.podcast_categories) or 'none'}) "
            f"match none of the targeted ({', '.join(t.categories)})"
        )
    return None


def _categories_match(targeted: tuple[str, ...], categories: tuple[str, ...]) -> bool:
    """A targeted parent category matches its subcategories ("Business" matches
    "Business/Investing")."""
    keys = {c.lower() for c in categories}
    keys |= {c.split("/")[0].strip().lower() for c in categories}
    return any(t.lower() in keys for t in targeted)


# Deals


@dataclass(frozen=True)
class Deal:
    id: uuid.UUID
    display_name: str
    sponsor_id: uuid.UUID
    campaign_id: uuid.UUID | None = None
    stage: DealStage = DealStage.PROSPECT
    amount: Money | None = None
    owner_user_id: str = ""
    expected_close_at: datetime | None = None
    notes: str = ""
    stage_changed_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


DEAL_UPDATABLE = frozenset(
    {"display_name", "campaign_id", "amount", "owner_user_id", "expected_close_time", "notes"}
)


def validate_deal(deal: Deal, prefix: str = "deal") -> Deal:
    deal = replace(
        deal, display_name=deal.display_name.strip(), owner_user_id=deal.owner_user_id.strip()
    )
    v = Violations()
    _check_name(deal.display_name, f"{prefix}.display_name", v)
    check_money(deal.amount, f"{prefix}.amount", v, required=False)
    v.check(len(deal.owner_user_id) <= MAX_NAME, f"{prefix}.owner_user_id", "too long")
    v.check(len(deal.notes) <= MAX_TEXT, f"{prefix}.notes", f"at most {MAX_TEXT} characters")
    v.raise_if_any()
    return deal


@dataclass(frozen=True)
class DealEvent:
    id: uuid.UUID
    deal_id: uuid.UUID
    from_stage: DealStage
    to_stage: DealStage
    event_time: datetime
    actor_type: str
    actor_id: str
    note: str


def check_note(note: str) -> None:
    if len(note) > MAX_TEXT:
        raise InvalidArgument.field("note", f"at most {MAX_TEXT} characters")
