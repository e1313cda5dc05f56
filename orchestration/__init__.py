"""Orchestration: the Airflow DAG that runs mmcurate as scheduled batch jobs.

`dag.build_dag()` (Airflow 3, `airflow.sdk`) runs one input partition per run: `mmcurate run`
(in the task, or through BeamRunPythonPipelineOperator for Dataflow/Flink), the corpus jobs
(`mmcurate corpus`) and the audit gate (`mmcurate audit --check`). `partitions` maps a partition
name (the logical date) to its input and output directory, `commands` builds and runs the
command lines, `launch` is the operator's `py_file`. Only `dag` imports Airflow.
"""
