"""The lake: Delta tables, their versions, history and schema guard."""
