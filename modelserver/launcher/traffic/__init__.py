"""Versions side by side: a model's candidate, the share of traffic it gets (canary, shadow),
the comparison of their answers and the rollback policy that watches them."""
