"""The members service (会员): identity, portrait, channels, referral, tiers, tags, staff, reach."""
