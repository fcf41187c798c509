"""The orders service (订单)."""
