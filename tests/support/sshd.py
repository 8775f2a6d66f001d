"""A real OpenSSH server for tests, run in the foreground inside a test network namespace
(``/usr/sbin/sshd -D -e -f CONFIG``), never as the machine's service: its own host key,
config, authorized_keys file and log, all under a test directory; stopped by PID (Lab)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.netns import Lab, Netns, wait_for

SSHD = "/usr/sbin/sshd"
PRIVSEP = Path("/run/sshd")  # sshd's compiled-in privilege-separation directory


def keygen(path: Path, comment: str = "test") -> str:
    """An ed25519 key pair at ``path``; the public key line (type and base64, no comment)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


@dataclass
class Sshd:
    ns: Netns
    address: str
    dir: Path
    host_key: str  # public line
    authorized_keys: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_sshd(lab: Lab, ns: Netns, address: str, d: Path) -> Sshd:
    d.mkdir(parents=True, exist_ok=True)
    host_key = keygen(d / "ssh_host_ed25519_key", "host")
    auth = d / "authorized_keys"
    auth.write_text("")
    cfg = d / "sshd_config"
    cfg.write_text(f"""ListenAddress {address}
Port 22
HostKey {d}/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile {auth}
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding no
X11Forwarding no
PermitTunnel no
PrintMotd no
LogLevel VERBOSE
""")
    # sshd's privilege-separation directory is compiled in (/run/sshd); Debian's ssh.service
    # makes it (RuntimeDirectory), but on a fresh machine where that service never ran it is
    # missing and sshd refuses to start: make it as the service would (root, 0755, empty)
    PRIVSEP.mkdir(mode=0o755, exist_ok=True)
    r = subprocess.run([SSHD, "-t", "-f", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, f"sshd -t -f {cfg}: {r.stderr}"
    log = d / "sshd.log"
    lab.popen([SSHD, "-D", "-e", "-f", str(cfg)], ns=ns, log=log)

    def listening() -> bool:
        r = ns.run("ss", "-ltn", check=False)
        return f"{address}:22" in r.stdout

    wait_for(listening, timeout=15, what=f"sshd on {address}:22 in {ns.name}")
    return Sshd(ns=ns, address=address, dir=d, host_key=host_key, authorized_keys=auth, log=log)


__all__ = ["Sshd", "keygen", "start_sshd"]
