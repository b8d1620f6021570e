"""Hourly GrowingIO exports, one run per Beijing hour, deferred while the hour is not ready.

Create the pool first (one per client id; deferred tasks count):
    airflow pools set growingio_acme 1 "GrowingIO acme" --include-deferred
"""

import pendulum
from airflow.sdk import DAG
from airflow.timetables.interval import CronDataIntervalTimetable

from backfill.integrations.airflow import GrowingIOFetchOperator

with DAG(
    "growingio_hourly",
    # A data interval per hour, in Beijing time (plain "@hourly" gives empty intervals).
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="Asia/Shanghai"),
    start_date=pendulum.datetime(2026, 11, 20, tz="Asia/Shanghai"),
    catchup=False,
    max_active_runs=1,  # with GIO_SECRET; a console token (GIO_TOKEN) allows more
):
    GrowingIOFetchOperator(
        task_id="visit_page",
        out="s3://my-lake/growingio",
        granularity="hour",
        types="visit,page",
        pool="growingio_acme",
        options={"max_wait": "3h"},
    )
