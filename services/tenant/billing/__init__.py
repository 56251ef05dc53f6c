"""Billing: plans, the Stripe customer and subscription, webhooks and metered usage."""
