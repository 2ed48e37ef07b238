"""Features: daily feature tables computed with PySpark, registered in and served by Feast."""
