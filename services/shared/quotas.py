"""The platform's default quotas, read by every service.

A tenant's quota of 0 stands for these: the tenant service enforces users and API keys,
analytics the monthly events and API keys' requests per second.
"""

DEFAULT_MAX_USERS = 100
DEFAULT_MAX_API_KEYS = 50
DEFAULT_MONTHLY_EVENTS = 100_000_000
DEFAULT_API_KEY_RPS = 200
