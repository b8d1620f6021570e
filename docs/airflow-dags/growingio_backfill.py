"""A range at once, as a backfill of this DAG: `airflow backfill create --dag-id
growingio_range --from-date 2026-11-01 --to-date 2026-11-14 --max-active-runs 1`, or the
UI's backfill. Its runs share the client id's pool (1 slot): one at a time holds the 2
calls/s budget, and finished keys cost nothing when a run is repeated.
"""

import pendulum
from airflow.sdk import DAG
from airflow.timetables.interval import CronDataIntervalTimetable

from backfill.integrations.airflow import GrowingIOFetchOperator

with DAG(
    "growingio_range",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="Asia/Shanghai"),
    start_date=pendulum.datetime(2026, 11, 1, tz="Asia/Shanghai"),
    catchup=False,
    max_active_runs=1,
):
    GrowingIOFetchOperator(
        task_id="visit",
        out="s3://my-lake/growingio",
        granularity="hour",  # the day's 24 hours, one key each
        types=["visit"],
        pool="growingio_acme",
        downloads=4,
    )
