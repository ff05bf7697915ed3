"""ditpolicy.deploy."""
