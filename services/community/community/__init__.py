"""The community service (社群): groups, activity, content, broadcasts, share chains, quick replies."""
