"""ditpolicy.policies."""
