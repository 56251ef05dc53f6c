"""What each tenant RPC requires of its caller."""

from __future__ import annotations

from services.shared.auth import Access, MethodRule, Permission

SERVICE = "podmesh.tenant.v1.TenantService"

_BY_METHOD: dict[str, MethodRule] = {
    "CreateTenant": Permission.PLATFORM_ADMIN,
    "GetTenant": Permission.TENANT_READ,
    "ListTenants": Permission.PLATFORM_ADMIN,
    "UpdateTenant": Permission.TENANT_WRITE,
    "CreateUser": Permission.USERS_WRITE,
    "GetUser": Permission.USERS_READ,
    "ListUsers": Permission.USERS_READ,
    "UpdateUser": Permission.USERS_WRITE,
    "DeleteUser": Permission.USERS_WRITE,
    # Only a user, for their own password: checked by the directory.
    "ChangePassword": Access.AUTHENTICATED,
    "Login": Access.PUBLIC,
    # The credential to check is the request itself.
    "IntrospectCredential": Access.PUBLIC,
    "CreateApiKey": Permission.API_KEYS_WRITE,
    "GetApiKey": Permission.API_KEYS_READ,
    "ListApiKeys": Permission.API_KEYS_READ,
    "RevokeApiKey": Permission.API_KEYS_WRITE,
    "IssueOwnerApiKey": Permission.PLATFORM_ADMIN,
    "ListAuditEvents": Permission.AUDIT_READ,
    # Other services relay the audit records they wrote with their own changes.
    "AppendAuditEvents": Permission.PLATFORM_ADMIN,
    "ListPlans": Access.AUTHENTICATED,
    # Billing is the owner's: admins and below are refused.
    "StartSubscription": Permission.BILLING_MANAGE,
    "ChangeSubscriptionPlan": Permission.BILLING_MANAGE,
    "CancelSubscription": Permission.BILLING_MANAGE,
    "ListInvoices": Permission.BILLING_MANAGE,
    "GetUsage": Permission.TENANT_READ,
    "ReportUsage": Permission.PLATFORM_ADMIN,
    # Stripe signs the body; the signature, not a credential, is checked.
    "HandleStripeWebhook": Access.PUBLIC,
}
RULES = {f"/{SERVICE}/{method}": rule for method, rule in _BY_METHOD.items()}
