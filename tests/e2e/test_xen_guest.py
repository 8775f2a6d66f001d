"""A Xen PVH guest made from the domu template, booted inside the hnode image under QEMU TCG.

The real images ``hcbuild image hnode domu`` makes (the shared build cache of
tests/support/builds.py).  QEMU runs the hnode's Xen + dom0 with its rootfs as a local disk
(``hc.root=/dev/vda``, as tests/integration/test_build_boot.py does) and three more disks:

- vdb: a copy-on-write view (``snapshot=on``) of the domu rootfs: the guest's xvda;
- vdc: an ISO with the dom0 side of the test (``run.sh``, the guest's xl config);
- vdd: the NoCloud seed, an ISO labelled ``cidata`` (meta-data, user-data): the guest's xvdb.

dom0 runs ``run.sh`` through systemd's ``systemd.run=``: it starts the Xen services,
``xl create``s the PVH guest with pvgrub2 as its only kernel, copies the guest's console log
(xenconsoled ``--log=guest``) to its own console (Xen's com1, QEMU's serial log), waits for
the guest's marker, shuts the guest down with ``xl shutdown``, then creates it paused and
``xl destroy``s it.  The guest's marker comes from the seed's ``runcmd``: it prints the
hostname, kernel release, machine-id, whether the seed's SSH key is in the default user's
authorized_keys and the fingerprint of the SSH host key made at first boot.

No NIC is given to the VM: nothing leaves QEMU.  Nested TCG is slow (minutes per guest
boot), so one guest boots; the identity-free template (two clones differ) is proven on the
built rootfs itself (debugfs, no mount) by test_domu_template_has_no_identity.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from homecloud.core.manifest import ImageStore, Manifest
from tests.support import builds
from tests.support.qemu import Disk, Vm, VmConfig, multiboot_initrd

PVGRUB = "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"
GUEST = "hcguest"
BOOT_TIMEOUT = 900      # hnode to dom0 userland and the Xen services, TCG on a busy 2-core box
GUEST_TIMEOUT = 1500    # xl create -> marker inside nested TCG (a first look: ~200 s to login)
GUEST_MEMORY_MB = 384

Images = tuple[Path, ImageStore, dict[str, Manifest]]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """hnode and domu, built once (or reused from ensure_built_all / the shared cache)."""
    if "all" in builds._SESSION:
        store = builds._SESSION["all"][0]
    else:
        cache = builds.session_cache(tmp_path_factory)
        given = os.environ.get("HC_TEST_BUILD_STORE")
        store = Path(given) if given else tmp_path_factory.mktemp("images")
        r = builds.hcbuild("image", "hnode", "domu", "--out", str(store), "--cache", str(cache))
        assert r.returncode == 0, r.stdout + r.stderr
    st = ImageStore(store)
    found: dict[str, Manifest] = {}
    for role in ("hnode", "domu"):
        m = st.manifest(role)
        assert m is not None, f"{store}: no {role} build"
        found[role] = m
    return store, st, found


def _artifact(images: Images, role: str, name: str) -> Path:
    store, _st, ms = images
    m = ms[role]
    return store / role / m.build_id / m.artifacts[name].file


def _debugfs(image: Path, request: str) -> str:
    """Read an ext4 image without mounting it (``debugfs -R``)."""
    r = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True)
    assert r.returncode == 0, f"debugfs -R {request!r} {image}: {r.stderr}"
    return r.stdout


def _exists(image: Path, path: str) -> bool:
    r = subprocess.run(["debugfs", "-R", f"stat {path}", str(image)],
                       capture_output=True, text=True)
    return r.returncode == 0 and "File not found" not in r.stderr and "Inode:" in r.stdout


def _ls(image: Path, path: str) -> list[str]:
    out = _debugfs(image, f"ls -l {path}")
    names = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[-1] not in (".", ".."):
            names.append(parts[-1])
    return names


# ------------------------------------------------------------ the images themselves (fast)

def test_domu_template_has_no_identity(images: Images) -> None:
    """Prepared the way cloud images are: no machine-id, no SSH host keys, no cloud-init
    state: every clone of the template makes its own at first boot, so two clones never
    share an identity.  Plus the pieces the guest boot needs: grub.cfg, cloud-init's
    datasource list, openssh-server."""
    rootfs = _artifact(images, "domu", "rootfs")
    kver = images[2]["domu"].versions["kernel"]

    assert _exists(rootfs, "/etc/machine-id"), "an empty /etc/machine-id marks the first boot"
    assert re.search(r"Size:\s+0\b", _debugfs(rootfs, "stat /etc/machine-id")), \
        f"{rootfs}: /etc/machine-id is not empty"
    ssh = _ls(rootfs, "/etc/ssh")
    assert "sshd_config" in ssh, f"{rootfs}: no openssh-server ({ssh})"
    assert not [n for n in ssh if n.startswith("ssh_host_")], f"{rootfs}: host keys {ssh}"
    assert not _exists(rootfs, "/var/lib/cloud/instance"), f"{rootfs}: cloud-init state left"
    cloud_state = _ls(rootfs, "/var/lib/cloud") if _exists(rootfs, "/var/lib/cloud") else []
    assert cloud_state == [], f"{rootfs}: /var/lib/cloud not clean: {cloud_state}"
    assert not _exists(rootfs, "/var/lib/systemd/random-seed")

    ds = _debugfs(rootfs, "cat /etc/cloud/cloud.cfg.d/90-hc-datasource.cfg")
    assert re.search(r"^datasource_list: \[ *NoCloud\b", ds, re.M), ds

    grub = _debugfs(rootfs, "cat /boot/grub/grub.cfg")
    assert f"linux /boot/vmlinuz-{kver} root=LABEL=hc-root ro console=hvc0" in grub, grub
    assert f"initrd /boot/initrd.img-{kver}" in grub, grub
    assert _exists(rootfs, f"/boot/vmlinuz-{kver}") and _exists(rootfs, f"/boot/initrd.img-{kver}")
    assert _exists(rootfs, "/etc/kernel/postinst.d/zz-hc-guest-grub-cfg")

    pkgs = {p.partition("=")[0] for p in images[2]["domu"].packages}
    assert {"cloud-init", "openssh-server"} <= pkgs


def test_hnode_has_pvgrub_run_xen_and_eager_fpu(images: Images) -> None:
    rootfs = _artifact(images, "hnode", "rootfs")
    m = images[2]["hnode"]
    assert "spec-ctrl=eager-fpu" in m.boot.xen_cmdline.split(), m.boot.xen_cmdline
    assert _exists(rootfs, PVGRUB), f"{rootfs}: no {PVGRUB} (grub-xen-host)"
    tmpfiles = _debugfs(rootfs, "cat /etc/tmpfiles.d/hc-xen-dom0.conf")
    assert re.search(r"^d /run/xen ", tmpfiles, re.M), tmpfiles


# ------------------------------------------------------------ the guest boot (slow)

def _iso(src: Path, out: Path, label: str) -> Path:
    tool = shutil.which("genisoimage") or shutil.which("xorrisofs")
    if tool is None:
        pytest.skip("genisoimage (or xorrisofs) is needed to make the seed and payload ISOs")
    r = subprocess.run([tool, "-quiet", "-o", str(out), "-V", label, "-J", "-r", str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"{tool} {src}: {r.stderr}"
    return out


def _xl_config() -> str:
    # the only kernel dom0 names is pvgrub2: the guest's own kernel comes from its own disk
    return textwrap.dedent(f"""\
        name = "{GUEST}"
        type = "pvh"
        kernel = "{PVGRUB}"
        memory = {GUEST_MEMORY_MB}
        vcpus = 1
        # TCG's emulated SVM has no NRIPS: PVH guests need the native TSC
        tsc_mode = "native"
        disk = [ "format=raw,vdev=xvda,access=rw,target=/dev/vdb",
                 "format=raw,vdev=xvdb,access=ro,devtype=disk,target=/dev/vdd" ]
        vif = [ ]
        # grub has been seen to triple-fault while loading under TCG: count, then retry
        on_crash = "restart"
        on_reboot = "restart"
        on_poweroff = "destroy"
        """)


def _seed(tmp: Path, key_comment: str, pubkey: str, hostname: str) -> Path:
    d = tmp / "seed"
    d.mkdir()
    (d / "meta-data").write_text(
        f"instance-id: iid-{hostname}\nlocal-hostname: {hostname}\n")
    marker = (
        "k=$(grep -c " + key_comment + " /home/debian/.ssh/authorized_keys); "
        "f=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2); "
        "echo HC-GUEST-UP host=$(hostname) kernel=$(uname -r) "
        "machine-id=$(cat /etc/machine-id) authorized=$k hostkey=$f > /dev/console"
    )
    (d / "user-data").write_text(
        "#cloud-config\n"
        f"ssh_authorized_keys:\n  - {pubkey}\n"
        "runcmd:\n"
        f"  - [sh, -c, \"{marker}\"]\n"
    )
    return _iso(d, tmp / "seed.iso", "cidata")


RUN_SH = r"""#!/bin/sh
# dom0 side of tests/e2e/test_xen_guest.py (runs from systemd.run=)
xl=/usr/lib/xen-4.17/bin/xl
log() { echo "HC-DOM0: $*" > /dev/console; }
now() { date +%s.%N; }
fail() { log "FAIL $*"; exit 1; }
domains() { $xl list | awk 'NR>1{print $1}' | tr '\n' ' '; }
glog=/var/log/xen/console/guest-@NAME@.log

systemctl start hc-xenconsoled.service || fail "systemctl start hc-xenconsoled.service"
[ -d /run/xen ] || fail "/run/xen missing"
log "services up; /run/xen $(stat -c %a /run/xen)"
t0=$(now)
$xl create /mnt/hc/guest.cfg > /tmp/xl-create.log 2>&1 || {
    cat /tmp/xl-create.log > /dev/console; fail "xl create /mnt/hc/guest.cfg"; }
log "created after $(awk "BEGIN{print $(now) - $t0}") s"
for i in $(seq 100); do [ -e "$glog" ] && break; sleep 0.2; done
[ -e "$glog" ] || fail "no $glog (xenconsoled --log=guest)"
tail -n +1 -F "$glog" | sed -u 's/^/HC-GUEST| /' > /dev/console &
tailpid=$!
gone=0
until grep -q 'HC-GUEST-UP host=' "$glog"; do
    # on_crash=restart: the domain is briefly absent while xl re-creates it
    if $xl list @NAME@ > /dev/null 2>&1; then gone=0; else gone=$((gone + 1)); fi
    [ "$gone" -lt 10 ] || fail "guest @NAME@ is gone before its marker"
    sleep 1
done
log "MARKER after $(awk "BEGIN{print $(now) - $t0}") s from xl create"
sleep 3
t1=$(now)
timeout 600 $xl shutdown -w @NAME@ > /tmp/xl-shutdown.log 2>&1 || {
    cat /tmp/xl-shutdown.log > /dev/console; fail "xl shutdown -w @NAME@"; }
# -w returns once the guest has shut down; xl's own monitor (forked by xl create) destroys
# the domain (on_poweroff) a moment later: a new domain of the same name must wait for that
n=0
while $xl list @NAME@ > /dev/null 2>&1; do
    n=$((n + 1)); [ "$n" -lt 120 ] || fail "@NAME@ still listed 120 s after xl shutdown -w"
    sleep 1
done
log "SHUTDOWN-OK after $(awk "BEGIN{print $(now) - $t1}") s; domains: $(domains)"
kill $tailpid
# a paused domain made and destroyed (xl destroy needs /run/xen)
$xl create -p /mnt/hc/guest.cfg > /tmp/xl-create2.log 2>&1 || {
    cat /tmp/xl-create2.log > /dev/console; fail "xl create -p"; }
log "paused: $(domains)"
$xl destroy @NAME@ > /tmp/xl-destroy.log 2>&1 || {
    cat /tmp/xl-destroy.log > /dev/console; fail "xl destroy @NAME@"; }
log "DESTROY-OK; domains: $(domains)"
"""


def test_pvh_guest_boots_its_own_kernel_with_cloud_init(images: Images, tmp_path: Path) -> None:
    hnode = {n: _artifact(images, "hnode", n) for n in ("xen", "kernel", "initrd", "rootfs")}
    domu_rootfs = _artifact(images, "domu", "rootfs")
    domu_kernel = images[2]["domu"].versions["kernel"]
    m = images[2]["hnode"]

    hostname = f"guest-{secrets.token_hex(3)}"
    comment = f"hc-e2e-{secrets.token_hex(4)}"
    keyfile = tmp_path / "id_ed25519"
    r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(keyfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    seed = _seed(tmp_path, comment, (tmp_path / "id_ed25519.pub").read_text().strip(), hostname)

    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "guest.cfg").write_text(_xl_config())
    (payload / "run.sh").write_text(RUN_SH.replace("@NAME@", GUEST))
    payload_iso = _iso(payload, tmp_path / "payload.iso", "HCTEST")

    # systemd.run: no '$' and no double quotes inside (see test_build_boot.run_check)
    check = "systemd.run=\"/bin/sh -c 'mkdir -p /mnt/hc && mount -o ro /dev/vdc /mnt/hc " \
            "&& sh /mnt/hc/run.sh'\""
    dom0 = f"{m.boot.cmdline} hc.root=/dev/vda {check}"
    cfg = VmConfig(
        memory_mb=2048, kernel=hnode["xen"], append=m.boot.xen_cmdline,
        initrd=multiboot_initrd([(hnode["kernel"], dom0), (hnode["initrd"], "")]),
        disks=[Disk(hnode["rootfs"], iface="virtio", snapshot=True),
               Disk(domu_rootfs, iface="virtio", snapshot=True),
               Disk(payload_iso, iface="virtio", readonly=True),
               Disk(seed, iface="virtio", readonly=True)],
        name="hnode-guest",
    )
    fail = r"HC-DOM0: FAIL.*|Kernel panic.*|HC-ERROR:.*"
    with Vm(cfg, workdir=tmp_path) as vm:
        vm.start()
        vm.wait_for(r"HC-DOM0: services up; /run/xen 700", timeout=BOOT_TIMEOUT, fail=fail)
        vm.wait_for(r"HC-DOM0: created after", timeout=300, fail=fail)
        t_created = time.monotonic()
        up = vm.wait_for(
            r"HC-GUEST\| \r*HC-GUEST-UP host=(\S+) kernel=(\S+) machine-id=([0-9a-f]*) "
            r"authorized=(\d+) hostkey=(\S*)", timeout=GUEST_TIMEOUT, fail=fail)
        wall = time.monotonic() - t_created
        inside = vm.wait_for(r"HC-DOM0: MARKER after ([0-9.]+) s", timeout=120, fail=fail)
        out = vm.output()
        # grub's line carries its terminal escapes: "HC-GUEST| <escapes>Reading (xen/xvda)/..."
        grub_reads = re.findall(r"^HC-GUEST\| .*Reading \((xen/xvda)\)/boot/grub/grub\.cfg",
                                out, re.M)
        print(f"\n[guest] xl create -> guest marker: {float(inside.group(1)):.1f}s (dom0 clock), "
              f"{wall:.1f}s (test wall); grub reads: {len(grub_reads)}")

        host, kernel, machine_id, authorized, hostkey = up.groups()
        assert host == hostname, f"hostname {host!r} is not the seed's {hostname!r}"
        assert kernel == domu_kernel, f"guest kernel {kernel} is not the domu image's"
        assert re.fullmatch(r"[0-9a-f]{32}", machine_id), f"machine-id {machine_id!r}"
        assert authorized == "1", f"seed key {comment} in authorized_keys {authorized} times"
        assert hostkey.startswith("SHA256:"), f"no SSH host key made at first boot: {hostkey!r}"
        # pvgrub2 found the guest's own grub.cfg on its own disk and loaded its kernel from it
        assert grub_reads, "pvgrub2 never read (xen/xvda)/boot/grub/grub.cfg"
        loading = rf"^HC-GUEST\| \r*hc-guest: loading /boot/vmlinuz-{re.escape(domu_kernel)} " \
                  r"from \(xen/xvda\)"
        assert re.search(loading, out, re.M), "the guest's kernel was not loaded from xvda"

        # xl shutdown, then a paused domain destroyed: nothing but dom0 left, no "(null)"
        vm.wait_for(r"HC-DOM0: SHUTDOWN-OK after [0-9.]+ s; domains: Domain-0 *\r*$",
                    timeout=700, fail=fail)
        vm.wait_for(rf"HC-DOM0: paused: Domain-0 {GUEST} *\r*$", timeout=300, fail=fail)
        vm.wait_for(r"HC-DOM0: DESTROY-OK; domains: Domain-0 *\r*$", timeout=120, fail=fail)
