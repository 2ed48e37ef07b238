"""Declarative automation: what carries a landed day from raw to the online store without a command.

An automation condition where "my parent changed" is the whole rule (bronze, silver, the feature
tables, the online store, the Feast registry); a sensor where a decision needs to look outside
Dagster (the landing sensor, which reads the landing zone).
"""

import dagster as dg

# Eager, for every day and not only the latest: a landed day of any date (a late file, a backfilled
# history) is carried downstream once its parents for that day are updated and none is missing.
CARRY_DAY = dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window())
# The online store applies feature_repo/ itself when the registry is missing or stale
# (`ensure_applied`), so the registry never holds a day back, and a re-apply re-pushes nothing.
CARRY_DAY_ONLINE = CARRY_DAY.ignore(dg.AssetSelection.assets("feast_registry"))
# The Feast registry: applied on a fresh instance (missing), and again whenever feature_repo/ changes
# (its code version is the repository's digest); a failed apply waits for a person, not a retry storm.
ON_REPO_CHANGE = ((dg.AutomationCondition.missing() | dg.AutomationCondition.code_version_changed())
                  & ~dg.AutomationCondition.in_progress() & ~dg.AutomationCondition.execution_failed())
