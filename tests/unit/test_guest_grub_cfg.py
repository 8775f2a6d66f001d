"""The guest's grub.cfg writer (elements/hc-xen-guest, /usr/sbin/hc-guest-grub-cfg), run on a
fake /boot: the file pvgrub2 reads from the guest's own disk (docs/guests.md)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from builder.elements import ElementLibrary

ELEMENT_SCRIPT = ElementLibrary().get("hc-xen-guest").path / "install.d" / "55-hc-guest-grub-cfg"


def _writer(tmp: Path) -> Path:
    """The script the element installs, cut out of its heredoc."""
    text = ELEMENT_SCRIPT.read_text()
    m = re.search(r"<<'SCRIPT'\n(.*?)\nSCRIPT\n", text, re.S)
    assert m, f"{ELEMENT_SCRIPT}: no hc-guest-grub-cfg heredoc"
    out = tmp / "hc-guest-grub-cfg"
    out.write_text(m.group(1) + "\n")
    return out


def _run(tmp: Path, boot: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HC_GUEST_BOOT_DIR": str(boot)}
    return subprocess.run(["sh", str(_writer(tmp))], env=env, capture_output=True, text=True)


def test_entries_newest_kernel_first_with_initrd_when_present(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        (boot / f"vmlinuz-{v}").write_bytes(b"k")
    (boot / "initrd.img-6.1.0-10-amd64").write_bytes(b"i")
    r = _run(tmp_path, boot)
    assert r.returncode == 0, r.stderr
    cfg = (boot / "grub" / "grub.cfg").read_text()
    entries = re.findall(r"^menuentry '[^']*' \{\n(.*?)^\}", cfg, re.S | re.M)
    assert len(entries) == 2, cfg
    first, second = entries
    # sort -V: 10 is newer than 9 (a plain sort would boot the old kernel)
    assert "linux /boot/vmlinuz-6.1.0-10-amd64 root=LABEL=hc-root ro console=hvc0\n" in first
    assert "initrd /boot/initrd.img-6.1.0-10-amd64\n" in first
    assert 'echo "hc-guest: loading /boot/vmlinuz-6.1.0-10-amd64 from (${root})"' in first
    assert "linux /boot/vmlinuz-6.1.0-9-amd64 " in second
    assert "initrd" not in second
    assert re.search(r"^set default=0$", cfg, re.M) and re.search(r"^set timeout=0$", cfg, re.M)


def test_no_kernel_is_an_error_and_leaves_no_config(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    r = _run(tmp_path, boot)
    assert r.returncode != 0
    assert "no " in r.stderr and "vmlinuz" in r.stderr
    assert not (boot / "grub" / "grub.cfg").exists()
