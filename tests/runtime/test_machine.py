"""The machine line every benchmark table starts with (mtl_jax.runtime.machine, stdlib only)."""

import subprocess
import sys

from mtl_jax.runtime import machine


def _cpuinfo(tmp_path, flags: str):
  path = tmp_path / "cpuinfo"
  path.write_text(
    "processor\t: 0\nvendor_id\t: GenuineIntel\n"
    "model name\t: Intel(R) Xeon(R) Platinum 8480C\n"
    f"flags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\nmodel name\t: other\n"
  )
  return str(path)


def test_names_the_cpu_and_its_vector_isa(tmp_path):
  line = machine.machine_line(4.32e11, cpuinfo=_cpuinfo(tmp_path, "avx2 avx512f amx_tile"))
  assert line.startswith("machine: Intel(R) Xeon(R) Platinum 8480C (AMX, AVX-512, AVX2), ")
  assert f"{machine.cores()} cores" in line and "jax " in line and "jaxlib " in line
  assert line.endswith("matmul peak measured now: 432 GFLOP/s")
  avx2 = machine.machine_line(None, cpuinfo=_cpuinfo(tmp_path, "avx avx2 fma"))
  assert "(AVX2)" in avx2 and "peak" not in avx2
  plain = machine.machine_line(None, cpuinfo=_cpuinfo(tmp_path, "sse4_2"))
  assert "(none of AVX2/AVX-512/AMX)" in plain
  assert machine.cpu_info(str(tmp_path / "missing"))[1] == set()


def test_versions_leave_out_what_is_not_installed():
  assert machine.versions(("numpy", "no-such-package-here")).startswith("numpy ")
  assert "no-such" not in machine.versions(("numpy", "no-such-package-here"))


def test_importing_it_does_not_import_jax():
  """torch_reference.py prints the same line from an environment without jax."""
  code = (
    "import sys; from mtl_jax.runtime import machine; machine.machine_line(None); "
    "print('jax' in sys.modules)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


def _stat(tmp_path, name: str, cpu_line: str) -> str:
  path = tmp_path / name
  path.write_text(f"{cpu_line}\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 0\n")
  return str(path)


def test_steal_share_between_two_readings(tmp_path):
  # user nice system idle iowait irq softirq steal guest guest_nice
  start = machine.cpu_times(_stat(tmp_path, "a", "cpu  100 0 10 500 0 0 0 40 0 0"))
  end = machine.cpu_times(_stat(tmp_path, "b", "cpu  700 0 50 700 0 0 0 340 0 0"))
  assert start == (40, 650) and end == (340, 1790)
  line = machine.steal_line(start, end)  # 300 of 1140 ticks stolen.
  assert line.startswith("CPU steal during this run: 26% of CPU time") and "noisy" in line
  quiet = machine.cpu_times(_stat(tmp_path, "c", "cpu  1700 0 50 700 0 0 0 341 0 0"))
  assert machine.steal_line(end, quiet) == "CPU steal during this run: 0% of CPU time"


def test_steal_is_left_out_where_it_cannot_be_read(tmp_path):
  assert machine.cpu_times(str(tmp_path / "missing")) is None
  assert machine.cpu_times(_stat(tmp_path, "short", "cpu  1 2 3 4")) is None
  assert machine.steal_line(None, (1, 2)) == ""
  assert machine.steal_line((5, 100), (5, 100)) == ""  # No time passed.


def test_cpu_summary_tells_apart_cpus_of_one_name(tmp_path):
  """Two "AMD EPYC" generations differ in family/model and vector ISA: a ledger row's
  machine names both (the first CPU's block only)."""
  path = tmp_path / "cpuinfo"
  block = "processor\t: {n}\ncpu family\t: {f}\nmodel\t\t: {m}\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n"
  path.write_text(
    block.format(n=0, f=25, m=17, flags="avx2 avx512f")
    + "\n"
    + block.format(n=1, f=23, m=1, flags="avx2")
  )
  assert machine.cpu_summary(str(path)) == (
    f"AMD EPYC (family 25 model 17; AVX-512, AVX2), {machine.cores()} cores"
  )
  path.write_text("model name\t: Some CPU\nflags\t\t: sse2\n")  # No family: left out.
  assert machine.cpu_summary(str(path)) == (
    f"Some CPU (none of AVX2/AVX-512/AMX), {machine.cores()} cores"
  )
  assert machine.cpu_summary(str(tmp_path / "missing")).endswith(f"), {machine.cores()} cores")
