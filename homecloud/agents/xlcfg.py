"""The xl domain configuration an hnode writes for a :class:`DomainSpec` (hostproto).

One renderer, golden-tested (tests/unit/golden/xlcfg-*.cfg).  The choices, from
docs/guests.md and the field notes:

- ``type = "pvh"`` with pvgrub2 as the only kernel dom0 names: the guest boots its own kernel
  from its own disk, so no guest kernel lives in dom0 and PVH can live-migrate (PV cannot with
  Debian's Xen);
- ``tsc_mode = "native"``: TCG's emulated SVM has no NRIPS, PVH guests need the native TSC;
- xvda is the root volume's AoE device ``/dev/etherd/eS.L`` (read-write), xvdb the NoCloud seed
  image (read-only, vfat labelled ``cidata``);
- one vif on the instance bridge with the instance MAC;
- ``on_crash = "restart"``: grub has been seen to triple-fault while loading under TCG;
- ``cpuid``, only when the host is told to (``hc.guest_cpuid=`` on its command line, e.g. the
  lab's ``host,avx=0,avx2=0``): under TCG's emulated SVM a PVH guest's AVX instructions fault
  (#UD in aesni_intel's self-test: an oops, and a udev worker stuck ~3 min in
  ``crypto_wait_for_test``, a task the freezer cannot freeze, so ``xl migrate`` then fails to
  suspend the guest).  Real hardware needs no mask.

Standard library only: this module ships into the node images.
"""

from __future__ import annotations

import re
from pathlib import Path

from homecloud.agents.hostproto import DomainSpec

PVGRUB = "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"
ETHERD = Path("/dev/etherd")
# libxl's xend-style cpuid list, restricted to what homecloud writes: host, then features on/off
CPUID_RE = re.compile(r"^host(,[a-z][a-z0-9_]{0,31}=[01]){1,32}$")


def check_cpuid(value: str) -> str:
    """``value`` when it is ``host,FEATURE=0|1,...``; ValueError naming it otherwise."""
    if not CPUID_RE.match(value):
        raise ValueError(f"guest cpuid {value!r}: expected host,FEATURE=0|1[,...] "
                         "(e.g. host,avx=0,avx2=0)")
    return value


def aoe_device(spec: DomainSpec, etherd: Path = ETHERD) -> Path:
    """The aoe driver's block device for the spec's root volume (``/dev/etherd/e1.3``)."""
    return etherd / str(spec.disk)


def _q(value: str) -> str:
    # every value here passed a strict reader (names, MACs, paths we build): no quotes inside
    if '"' in value or "\\" in value or "\n" in value:
        raise ValueError(f"xl config value with a quote, backslash or newline: {value!r}")
    return f'"{value}"'


def render(spec: DomainSpec, seed_image: Path, etherd: Path = ETHERD,
           kernel: str = PVGRUB, cpuid: str = "") -> str:
    """The xl config text for ``spec`` whose seed image is at ``seed_image``; ``cpuid``: a
    feature mask for the guest (``check_cpuid``), none when empty."""
    disk = aoe_device(spec, etherd)
    lines = [
        f"# homecloud instance {spec.name}: written by the hnode agent, do not edit",
        f"name = {_q(spec.name)}",
        f"uuid = {_q(spec.uuid)}",
        'type = "pvh"',
        f"kernel = {_q(kernel)}",
        f"memory = {spec.memory_mb}",
        f"maxmem = {spec.memory_mb}",
        f"vcpus = {spec.vcpus}",
        'tsc_mode = "native"',
        "disk = [ "
        + _q(f"format=raw,vdev=xvda,access=rw,target={disk}")
        + ",\n         "
        + _q(f"format=raw,vdev=xvdb,access=ro,devtype=disk,target={seed_image}")
        + " ]",
        f"vif = [ {_q(f'mac={spec.mac},bridge={spec.bridge}')} ]",
        'on_poweroff = "destroy"',
        'on_reboot = "restart"',
        'on_crash = "restart"',
    ]
    if cpuid:
        lines.append(f"cpuid = {_q(check_cpuid(cpuid))}")
    return "\n".join(lines) + "\n"
