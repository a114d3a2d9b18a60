"""Start N local processes of one command as one multi-process JAX job (one machine).

    python scripts/launch_local.py --processes 2 --devices_per_process 2 -- \
        python main.py --config=configs/pcgrad.py --workdir=runs/mp

Each process gets JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT (process 0's coordinator listens
on loopback only: JAX_COORDINATOR_BIND_ADDRESS), JAX_NUM_PROCESSES=N and its own
JAX_PROCESS_ID, so `mtl_jax.runtime.parallel.initialize_distributed` joins them into one job whose
devices are all of theirs (on CPU, `--devices_per_process` forces that many devices per
process through XLA_FLAGS). This is how a cluster's launcher (srun, mpirun) starts the
job, here on loopback only: it is for trying and testing multi-process runs on one
machine, not for speed (the processes share the machine's cores).

SIGINT and SIGTERM are forwarded to every process (the trainer saves a checkpoint of the
step they agree on and exits 130); when one process fails, the others are terminated
rather than left waiting for it (and killed if they have not exited a minute later, as a
process blocked in a collective with the dead one would not). Exits with the first
non-zero exit code, else 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

# After one process failed: how long the others may take to save and exit before SIGKILL.
KILL_AFTER_S = 60


def free_port() -> int:
  """A TCP port that is free on 127.0.0.1 now (the kernel picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(
  environ: dict, index: int, count: int, port: int, devices_per_process: int | None
) -> dict:
  """The environment of process `index` of `count`: the coordinator on loopback, and with
  `devices_per_process` that many forced CPU devices (replacing any such XLA flag)."""
  env = dict(
    environ,
    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
    JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",  # Not every interface.
    JAX_NUM_PROCESSES=str(count),
    JAX_PROCESS_ID=str(index),
  )
  if devices_per_process:
    flags = [
      f
      for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join(
      flags + [f"--xla_force_host_platform_device_count={devices_per_process}"]
    )
  return env


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--processes", "-n", type=int, default=2)
  parser.add_argument(
    "--devices_per_process",
    type=int,
    default=None,
    help="CPU only: forced devices per process (default: XLA's, one)",
  )
  parser.add_argument(
    "--port", type=int, default=None, help="coordinator port on 127.0.0.1 (default: a free one)"
  )
  parser.add_argument(
    "command", nargs=argparse.REMAINDER, help="the command every process runs, after --"
  )
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("no command: put it after --, e.g. -- python main.py ...")
  if args.processes < 1:
    parser.error("--processes must be at least 1")
  port = args.port or free_port()
  # Own sessions: a Ctrl-C in the terminal reaches them once, through forward() below,
  # not twice (a second signal means "stop at once" to the trainer).
  procs = [
    subprocess.Popen(
      command,
      env=process_env(os.environ, i, args.processes, port, args.devices_per_process),
      start_new_session=True,
    )
    for i in range(args.processes)
  ]
  print(
    f"launch_local: {args.processes} processes (pids "
    f"{' '.join(str(p.pid) for p in procs)}), coordinator 127.0.0.1:{port}",
    file=sys.stderr,
    flush=True,
  )

  signalled = []

  def forward(signum, frame):
    del frame
    signalled.append(signum)
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, forward)
  failed, deadline = None, None
  while any(p.poll() is None for p in procs):
    bad = [p for p in procs if p.poll() not in (None, 0)]
    if bad and failed is None and not signalled:  # The others would wait for it.
      failed, deadline = bad[0].returncode, time.time() + KILL_AFTER_S
      print(
        f"launch_local: process {procs.index(bad[0])} exited with {failed}; terminating the others",
        file=sys.stderr,
        flush=True,
      )
      forward(signal.SIGTERM, None)
    if deadline is not None and time.time() > deadline:  # Stuck in a collective.
      forward(signal.SIGKILL, None)
    time.sleep(0.2)
  codes = [p.returncode for p in procs]
  return failed if failed is not None else next((c for c in codes if c), 0)


if __name__ == "__main__":
  sys.exit(main())
