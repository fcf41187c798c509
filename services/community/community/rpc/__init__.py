"""The RPCs of CommunityService, one mixin per sub-domain, composed in :mod:`community.servicer`."""
