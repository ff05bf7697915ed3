"""ditpolicy.configs."""
