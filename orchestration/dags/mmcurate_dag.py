"""Airflow DAG file: copy (or symlink) into the dags folder of an Airflow deployment whose
environment has mmcurate installed. The DAG itself is built in `mmcurate.orchestration.dag`
(see README "Orchestration"); deployment defaults come from MMCURATE_* environment variables."""

from mmcurate.orchestration.dag import build_dag

dag = build_dag()
