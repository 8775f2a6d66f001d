"""Two Xen PVH guests cloned from the domu template, booted inside the hnode image under
QEMU TCG.

The real images ``hcbuild image hnode domu`` makes (the shared build cache of
tests/support/builds.py).  QEMU runs the hnode's Xen + dom0 with its rootfs as a local disk
(``hc.root=/dev/vda``, as tests/integration/test_build_boot.py does) and more disks:

- vdb: an ISO with the dom0 side of the test (``run.sh``, the guests' xl configs);
- per guest (vdc+vdd, vde+vdf): a copy-on-write view (``snapshot=on``) of the domu rootfs,
  the guest's xvda -- two clones of one template -- and its NoCloud seed, an ISO labelled
  ``cidata`` (meta-data with its own hostname, user-data), the guest's xvdb.

dom0 runs ``run.sh`` through systemd's ``systemd.run=``: it starts the Xen services,
``xl create``s both PVH guests with pvgrub2 as their only kernel, copies their console logs
(xenconsoled ``--log=guest``) to its own console (Xen's com1, QEMU's serial log), waits for
both markers, shuts the guests down with ``xl shutdown``, then creates one paused and
``xl destroy``s it.  A guest's marker comes from its seed's ``runcmd``: it prints the
hostname, kernel release, machine-id, whether the seed's SSH key is in the default user's
authorized_keys and the fingerprint of the SSH host key made at first boot; the two clones
must differ in machine-id and host key.  test_domu_template_has_no_identity checks the
template itself (debugfs on the built rootfs, no mount).

No NIC is given to the VM: nothing leaves QEMU.
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
GUESTS = ("hcguest1", "hcguest2")   # two clones of the template, booted at once
BOOT_TIMEOUT = 900      # hnode to dom0 userland and the Xen services, TCG on a busy 2-core box
GUEST_TIMEOUT = 2400    # both markers, nested TCG (one guest alone: 195-620 s measured)
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


def _xl_config(name: str, disk: str, seed: str) -> str:
    # the only kernel dom0 names is pvgrub2: the guest's own kernel comes from its own disk
    return textwrap.dedent(f"""\
        name = "{name}"
        type = "pvh"
        kernel = "{PVGRUB}"
        memory = {GUEST_MEMORY_MB}
        vcpus = 1
        # TCG's emulated SVM has no NRIPS: PVH guests need the native TSC
        tsc_mode = "native"
        disk = [ "format=raw,vdev=xvda,access=rw,target={disk}",
                 "format=raw,vdev=xvdb,access=ro,devtype=disk,target={seed}" ]
        vif = [ ]
        # grub has been seen to triple-fault while loading under TCG: then retry
        on_crash = "restart"
        on_reboot = "restart"
        on_poweroff = "destroy"
        """)


def _seed(tmp: Path, name: str, key_comment: str, pubkey: str, hostname: str) -> Path:
    d = tmp / f"seed-{name}"
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
    return _iso(d, tmp / f"seed-{name}.iso", "cidata")


RUN_SH = r"""#!/bin/sh
# dom0 side of tests/e2e/test_xen_guest.py (runs from systemd.run=): two clones at once
xl=/usr/lib/xen-4.17/bin/xl
names="@NAMES@"
log() { echo "HC-DOM0: $*" > /dev/console; }
now() { date +%s.%N; }
since() { awk "BEGIN{print $(now) - $(cat /tmp/t0-$1)}"; }
fail() { log "FAIL $*"; exit 1; }
domains() { $xl list | awk 'NR>1{print $1}' | tr '\n' ' '; }
glog() { echo "/var/log/xen/console/guest-$1.log"; }

systemctl start hc-xenconsoled.service || fail "systemctl start hc-xenconsoled.service"
[ -d /run/xen ] || fail "/run/xen missing"
log "services up; /run/xen $(stat -c %a /run/xen)"
for g in $names; do
    now > "/tmp/t0-$g"
    $xl create "/mnt/hc/$g.cfg" > "/tmp/xl-create-$g.log" 2>&1 || {
        cat "/tmp/xl-create-$g.log" > /dev/console; fail "xl create /mnt/hc/$g.cfg"; }
    log "created $g after $(since "$g") s"
done
tails=""
for g in $names; do
    for i in $(seq 100); do [ -e "$(glog "$g")" ] && break; sleep 0.2; done
    [ -e "$(glog "$g")" ] || fail "no $(glog "$g") (xenconsoled --log=guest)"
    tail -n +1 -F "$(glog "$g")" | sed -u "s/^/HC-GUEST $g| /" > /dev/console &
    tails="$tails $!"
done
pending="$names"
gone=0
while [ -n "$pending" ]; do
    left=""
    missing=0
    for g in $pending; do
        if grep -q 'HC-GUEST-UP host=' "$(glog "$g")"; then
            log "MARKER $g after $(since "$g") s from xl create"
            continue
        fi
        left="$left $g"
        # on_crash=restart: a domain is briefly absent while xl re-creates it
        $xl list "$g" > /dev/null 2>&1 || missing=1
    done
    if [ "$missing" = 1 ]; then gone=$((gone + 1)); else gone=0; fi
    [ "$gone" -lt 10 ] || fail "a guest of$left is gone before its marker"
    pending="$left"
    sleep 1
done
log "MARKERS-DONE"
sleep 3
for g in $names; do
    t1=$(now)
    timeout 600 $xl shutdown -w "$g" > /tmp/xl-shutdown.log 2>&1 || {
        cat /tmp/xl-shutdown.log > /dev/console; fail "xl shutdown -w $g"; }
    # -w returns once the guest has shut down; xl's own monitor (forked by xl create)
    # destroys the domain (on_poweroff) a moment later: a new domain of the same name must
    # wait for that
    n=0
    while $xl list "$g" > /dev/null 2>&1; do
        n=$((n + 1)); [ "$n" -lt 120 ] || fail "$g still listed 120 s after xl shutdown -w"
        sleep 1
    done
    log "SHUTDOWN $g after $(awk "BEGIN{print $(now) - $t1}") s"
done
log "SHUTDOWN-OK; domains: $(domains)"
kill $tails
# a paused domain made and destroyed (xl destroy needs /run/xen)
set -- $names
$xl create -p "/mnt/hc/$1.cfg" > /tmp/xl-create-p.log 2>&1 || {
    cat /tmp/xl-create-p.log > /dev/console; fail "xl create -p /mnt/hc/$1.cfg"; }
log "paused: $(domains)"
$xl destroy "$1" > /tmp/xl-destroy.log 2>&1 || {
    cat /tmp/xl-destroy.log > /dev/console; fail "xl destroy $1"; }
log "DESTROY-OK; domains: $(domains)"
"""


def test_two_pvh_clones_boot_their_own_kernel_with_cloud_init(images: Images,
                                                               tmp_path: Path) -> None:
    hnode = {n: _artifact(images, "hnode", n) for n in ("xen", "kernel", "initrd", "rootfs")}
    domu_rootfs = _artifact(images, "domu", "rootfs")
    domu_kernel = images[2]["domu"].versions["kernel"]
    m = images[2]["hnode"]

    comment = f"hc-e2e-{secrets.token_hex(4)}"
    keyfile = tmp_path / "id_ed25519"
    r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(keyfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pubkey = (tmp_path / "id_ed25519.pub").read_text().strip()

    # dom0's disks: vda its root, vdb its test payload, then per guest: the template's rootfs
    # (each its own copy-on-write view: a clone) and its seed
    payload = tmp_path / "payload"
    payload.mkdir()
    hostnames: dict[str, str] = {}
    guest_disks: list[Disk] = []
    for i, name in enumerate(GUESTS):
        disk, seed_dev = f"/dev/vd{chr(ord('c') + 2 * i)}", f"/dev/vd{chr(ord('d') + 2 * i)}"
        hostnames[name] = f"guest{i + 1}-{secrets.token_hex(3)}"
        seed = _seed(tmp_path, name, comment, pubkey, hostnames[name])
        guest_disks += [Disk(domu_rootfs, iface="virtio", snapshot=True),
                        Disk(seed, iface="virtio", readonly=True)]
        (payload / f"{name}.cfg").write_text(_xl_config(name, disk, seed_dev))
    (payload / "run.sh").write_text(RUN_SH.replace("@NAMES@", " ".join(GUESTS)))
    payload_iso = _iso(payload, tmp_path / "payload.iso", "HCTEST")

    # systemd.run: no '$' and no double quotes inside (see test_build_boot.run_check)
    check = "systemd.run=\"/bin/sh -c 'mkdir -p /mnt/hc && mount -o ro /dev/vdb /mnt/hc " \
            "&& sh /mnt/hc/run.sh'\""
    dom0 = f"{m.boot.cmdline} hc.root=/dev/vda {check}"
    cfg = VmConfig(
        memory_mb=2048, kernel=hnode["xen"], append=m.boot.xen_cmdline,
        initrd=multiboot_initrd([(hnode["kernel"], dom0), (hnode["initrd"], "")]),
        disks=[Disk(hnode["rootfs"], iface="virtio", snapshot=True),
               Disk(payload_iso, iface="virtio", readonly=True), *guest_disks],
        name="hnode-guest",
    )
    fail = r"HC-DOM0: FAIL.*|Kernel panic.*|HC-ERROR:.*"
    with Vm(cfg, workdir=tmp_path) as vm:
        vm.start()
        vm.wait_for(r"HC-DOM0: services up; /run/xen 700", timeout=BOOT_TIMEOUT, fail=fail)
        vm.wait_for(rf"HC-DOM0: created {GUESTS[-1]} after", timeout=300, fail=fail)
        t_created = time.monotonic()
        vm.wait_for(r"HC-DOM0: MARKERS-DONE", timeout=GUEST_TIMEOUT, fail=fail)
        wall = time.monotonic() - t_created
        out = vm.output()

        seen: dict[str, tuple[str, ...]] = {}
        for name in GUESTS:
            g = re.escape(name)
            up = re.search(
                rf"^HC-GUEST {g}\| \r*HC-GUEST-UP host=(\S+) kernel=(\S+) "
                r"machine-id=([0-9a-f]*) authorized=(\d+) hostkey=(\S*)", out, re.M)
            assert up, f"no marker from {name}"
            secs = re.search(rf"HC-DOM0: MARKER {g} after ([0-9.]+) s", out)
            assert secs, f"dom0 logged no marker time for {name}"
            # grub's line carries its terminal escapes: "HC-GUEST g| <escapes>Reading (...)"
            grub_reads = re.findall(
                rf"^HC-GUEST {g}\| .*Reading \(xen/xvda\)/boot/grub/grub\.cfg", out, re.M)
            print(f"\n[guest] {name}: xl create -> marker {float(secs.group(1)):.1f}s "
                  f"(dom0 clock; both guests booting at once), grub reads: {len(grub_reads)}")

            host, kernel, machine_id, authorized, hostkey = up.groups()
            assert host == hostnames[name], f"{name}: hostname {host!r}, seed {hostnames[name]}"
            assert kernel == domu_kernel, f"{name}: kernel {kernel} is not the domu image's"
            assert re.fullmatch(r"[0-9a-f]{32}", machine_id), f"{name}: machine-id {machine_id!r}"
            assert authorized == "1", f"{name}: seed key {comment} in authorized_keys {authorized}x"
            assert hostkey.startswith("SHA256:"), f"{name}: no SSH host key: {hostkey!r}"
            # pvgrub2 found the guest's own grub.cfg on its own disk, loaded its kernel from it
            assert grub_reads, f"{name}: pvgrub2 never read (xen/xvda)/boot/grub/grub.cfg"
            loading = (rf"^HC-GUEST {g}\| \r*hc-guest: loading "
                       rf"/boot/vmlinuz-{re.escape(domu_kernel)} from \(xen/xvda\)")
            assert re.search(loading, out, re.M), f"{name}: kernel not loaded from its xvda"
            seen[name] = (machine_id, hostkey)
        print(f"[guest] both markers {wall:.1f}s (test wall) after the last xl create returned")
        # two clones of one template: no shared identity
        (mid1, key1), (mid2, key2) = seen.values()
        assert mid1 != mid2, f"two clones share machine-id {mid1}"
        assert key1 != key2, f"two clones share SSH host key {key1}"

        # xl shutdown, then a paused domain destroyed: nothing but dom0 left, no "(null)"
        vm.wait_for(r"HC-DOM0: SHUTDOWN-OK; domains: Domain-0 *\r*$", timeout=900, fail=fail)
        vm.wait_for(rf"HC-DOM0: paused: Domain-0 {GUESTS[0]} *\r*$", timeout=300, fail=fail)
        vm.wait_for(r"HC-DOM0: DESTROY-OK; domains: Domain-0 *\r*$", timeout=120, fail=fail)
