"""The RPCs of MembersService, one mixin per sub-domain, composed in :mod:`members.servicer`."""
