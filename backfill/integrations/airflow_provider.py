"""What Airflow's provider manager lists (the ``apache_airflow_provider`` entry point).

A module of its own that imports nothing of Airflow: the provider manager loads it while
Airflow itself is still starting.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    from backfill import __version__
    from backfill.install import DISTRIBUTION

    module = "backfill.integrations.airflow"
    return {
        "package-name": DISTRIBUTION,  # the distribution's name, as Airflow wants
        "name": "GrowingIO backfill",
        "description": "Fetch GrowingIO raw event exports, deferrable, into a folder or a "
                       "bucket, as raw parts or typed tables.",
        "versions": [__version__],
        "integrations": [{"integration-name": "GrowingIO",
                          "external-doc-url": "https://docs.growingio.com",
                          "tags": ["service"]}],
        "operators": [{"integration-name": "GrowingIO", "python-modules": [module]}],
        "triggers": [{"integration-name": "GrowingIO", "python-modules": [module]}],
    }
