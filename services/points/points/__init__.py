"""The points service (积分商城)."""
