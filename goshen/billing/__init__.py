"""Billing: what a job may cost, and the credit ledger's operations (grant, adjust, hold,
capture, release), in integer micro-credits (1 credit = 1,000,000)."""
