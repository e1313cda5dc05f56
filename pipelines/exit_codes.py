"""The exit status of every `mmcurate` command, and its description for `--help`.

A module of its own so that the commands defined outside the CLI module (`mmcurate export`) and
the Airflow DAG, which keys its retries on the status, read the same numbers without importing
the CLI (which imports them).
"""

EXIT_OK = 0
EXIT_VERDICT = 1  # every input rejected, an inconsistent output, a failed gate
EXIT_USAGE = 2  # a bad flag, value, config or gate file, a runner or input that cannot be used
EXIT_CRASH = 3  # an unexpected error (a bug, a full disk, a lost worker, a race)

EXIT_EPILOG = """\
Exit status:
  0  done
  1  a verdict on the data: every input was rejected (run), the output is not consistent
     (audit: PROBLEMS), a gate failed (audit --check)
  2  arguments, config or environment, found before any work: a bad flag or value, an
     unknown Beam option, a runner that cannot start here, no input that exists, an output
     in use or not writable, a malformed gate file
  3  an unexpected error (a crash, a full disk, a lost worker): one line with the cause, the
     traceback in the log file it names (OUT/_logs/ for run and corpus, else the temp folder);
     running the same command again is safe (a run goes on from its checkpoints)
"""
