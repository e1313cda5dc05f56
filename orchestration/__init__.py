"""Orchestration (Airflow). The DAG factory lands with its own issue; the job entry point it will call is `mmcurate.pipelines.curate.run`."""
