"""Row-level validation of landed data with Great Expectations suites built from the contracts."""
