"""A daily run per Beijing day, into a Delta table per type. Each run's interval is one day,
midnight to midnight in Beijing; the run starts when the day ends and defers (holding no
worker slot) until GrowingIO can export it, about three hours later."""

import pendulum
from airflow.sdk import DAG
from airflow.timetables.interval import CronDataIntervalTimetable

from backfill.integrations.airflow import GrowingIOFetchOperator

with DAG(
    "growingio_daily",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="Asia/Shanghai"),
    start_date=pendulum.datetime(2026, 11, 20, tz="Asia/Shanghai"),
    catchup=True,
    max_active_runs=1,
):
    GrowingIOFetchOperator(
        task_id="all_types",
        out="/data/growingio",
        granularity="day",
        format="delta",
        pool="growingio_acme",
    )
