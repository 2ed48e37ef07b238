"""Features: daily feature tables computed with PySpark, served by Feast."""
